//! etcd v2 error codes, messages and their HTTP statuses (etcd's `v2error` package).

use serde::Serialize;

/// An etcd v2 error as it goes over the wire:
/// `{"errorCode":N,"message":"…","cause":"…","index":N}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{error_code}: {message} ({cause}) [{index}]")]
pub struct V2Error {
    #[serde(rename = "errorCode")]
    pub error_code: u32,
    pub message: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub cause: String,
    pub index: u64,
}

/// Error codes of the v2 API (etcd `v2error/error.go`).
pub mod code {
    pub const KEY_NOT_FOUND: u32 = 100;
    pub const TEST_FAILED: u32 = 101;
    pub const NOT_FILE: u32 = 102;
    pub const NOT_DIR: u32 = 104;
    pub const NODE_EXIST: u32 = 105;
    pub const ROOT_RONLY: u32 = 107;
    pub const DIR_NOT_EMPTY: u32 = 108;
    pub const UNAUTHORIZED: u32 = 110;
    pub const PREV_VALUE_REQUIRED: u32 = 201;
    pub const TTL_NAN: u32 = 202;
    pub const INDEX_NAN: u32 = 203;
    pub const INVALID_FIELD: u32 = 209;
    pub const INVALID_FORM: u32 = 210;
    pub const REFRESH_VALUE: u32 = 211;
    pub const REFRESH_TTL_REQUIRED: u32 = 212;
    pub const RAFT_INTERNAL: u32 = 300;
    pub const LEADER_ELECT: u32 = 301;
    pub const WATCHER_CLEARED: u32 = 400;
    pub const EVENT_INDEX_CLEARED: u32 = 401;
}

/// The message etcd sends for a code.
pub fn message(error_code: u32) -> &'static str {
    match error_code {
        100 => "Key not found",
        101 => "Compare failed",
        102 => "Not a file",
        104 => "Not a directory",
        105 => "Key already exists",
        107 => "Root is read only",
        108 => "Directory not empty",
        110 => "The request requires user authentication",
        201 => "PrevValue is Required in POST form",
        202 => "The given TTL in POST form is not a number",
        203 => "The given index in POST form is not a number",
        209 => "Invalid field",
        210 => "Invalid POST form",
        211 => "Value provided on refresh",
        212 => "A TTL must be provided on refresh",
        300 => "Raft Internal Error",
        301 => "During Leader Election",
        400 => "watcher is cleared due to etcd recovery",
        401 => "The event in requested index is outdated and cleared",
        _ => "Unknown error",
    }
}

impl V2Error {
    pub fn new(error_code: u32, cause: impl Into<String>, index: u64) -> Self {
        V2Error {
            error_code,
            message: message(error_code),
            cause: cause.into(),
            index,
        }
    }

    /// A request-parsing error: etcd reports those with index 0.
    pub fn request(error_code: u32, cause: impl Into<String>) -> Self {
        Self::new(error_code, cause, 0)
    }

    /// HTTP status etcd uses for this code (`errorStatus`); everything unlisted is 400.
    pub fn http_status(&self) -> u16 {
        match self.error_code {
            code::KEY_NOT_FOUND => 404,
            code::TEST_FAILED | code::NODE_EXIST => 412,
            code::NOT_FILE | code::DIR_NOT_EMPTY => 403,
            code::UNAUTHORIZED => 401,
            code::RAFT_INTERNAL | code::LEADER_ELECT => 500,
            _ => 400,
        }
    }
}

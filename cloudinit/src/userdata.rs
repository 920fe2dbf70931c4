//! Recognising user-data from its raw bytes, as coreos-cloudinit did, plus MIME.
//!
//! gzip magic → decompress (once); empty → nothing to do; first line `#cloud-config`
//! (trailing whitespace ignored) → cloud-config; `#!` → script; JSON with
//! `ignitionVersion` or `ignition.version` → Ignition (recognised, not applied); a MIME
//! `multipart/mixed` document → its `text/cloud-config` and `text/x-shellscript` parts
//! (base64 / quoted-printable transfer encodings and gzip parts handled); anything else
//! is reported as coreos-cloudinit reported it.

use std::io::Read;

/// The most bytes decompressed user-data may grow to: far above any real config, it
/// stops a gzip bomb from exhausting memory at boot.
pub const MAX_DECOMPRESSED_BYTES: u64 = 64 * 1024 * 1024;

/// Recognised user-data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserData {
    Empty,
    CloudConfig(String),
    Script(String),
    Ignition,
    /// MIME multipart: parts in document order.
    Multipart(Vec<Part>),
    /// Not a format Keel applies; the message says what was found.
    Unknown(String),
}

/// One usable MIME part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    CloudConfig(String),
    Script(String),
}

/// What went wrong reading user-data bytes.
#[derive(Debug, thiserror::Error)]
pub enum UserDataError {
    #[error("user-data is gzip-compressed but cannot be decompressed")]
    Gzip(#[source] std::io::Error),
    #[error("user-data decompresses to more than {MAX_DECOMPRESSED_BYTES} bytes")]
    TooLarge,
    #[error("MIME user-data cannot be parsed")]
    Mime(#[source] mailparse::MailParseError),
}

const GZIP_MAGIC: &[u8] = b"\x1f\x8b";

/// Decompresses gzip'd bytes (bounded by [`MAX_DECOMPRESSED_BYTES`]); other bytes pass.
pub fn gunzip_if_needed(bytes: &[u8]) -> Result<Vec<u8>, UserDataError> {
    if !bytes.starts_with(GZIP_MAGIC) {
        return Ok(bytes.to_vec());
    }
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes)
        .take(MAX_DECOMPRESSED_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(UserDataError::Gzip)?;
    if out.len() as u64 > MAX_DECOMPRESSED_BYTES {
        return Err(UserDataError::TooLarge);
    }
    Ok(out)
}

fn first_line(text: &str) -> &str {
    text.split('\n').next().unwrap_or("")
}

pub fn is_cloud_config(text: &str) -> bool {
    first_line(text).trim_end() == "#cloud-config"
}

pub fn is_script(text: &str) -> bool {
    text.starts_with("#!")
}

pub fn is_ignition(text: &str) -> bool {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v) => {
            v.get("ignitionVersion").is_some()
                || v.get("ignition").and_then(|i| i.get("version")).is_some()
        }
        Err(_) => false,
    }
}

fn is_mime(text: &str) -> bool {
    let head = text.get(..text.len().min(4096)).unwrap_or(text);
    let lower = head.to_ascii_lowercase();
    (lower.starts_with("content-type:") || lower.starts_with("mime-version:"))
        && lower.contains("multipart/")
}

/// Recognises already-decompressed user-data.
pub fn classify(bytes: &[u8]) -> Result<UserData, UserDataError> {
    let bytes = gunzip_if_needed(bytes)?;
    if bytes.is_empty() {
        return Ok(UserData::Empty);
    }
    let Ok(text) = String::from_utf8(bytes) else {
        return Ok(UserData::Unknown(
            "user-data is neither UTF-8 text nor gzip".into(),
        ));
    };
    if is_script(&text) {
        Ok(UserData::Script(text))
    } else if is_cloud_config(&text) {
        Ok(UserData::CloudConfig(text))
    } else if is_ignition(&text) {
        Ok(UserData::Ignition)
    } else if is_mime(&text) {
        Ok(UserData::Multipart(mime_parts(text.as_bytes())?))
    } else {
        Ok(UserData::Unknown(
            "must be \"#cloud-config\" or begin with \"#!\"".into(),
        ))
    }
}

fn mime_parts(bytes: &[u8]) -> Result<Vec<Part>, UserDataError> {
    let mail = mailparse::parse_mail(bytes).map_err(UserDataError::Mime)?;
    let mut parts = Vec::new();
    collect(&mail, &mut parts)?;
    Ok(parts)
}

fn collect(mail: &mailparse::ParsedMail<'_>, out: &mut Vec<Part>) -> Result<(), UserDataError> {
    if !mail.subparts.is_empty() {
        for sub in &mail.subparts {
            collect(sub, out)?;
        }
        return Ok(());
    }
    let body = mail.get_body_raw().map_err(UserDataError::Mime)?;
    let body = gunzip_if_needed(&body)?;
    let text = String::from_utf8_lossy(&body).into_owned();
    match mail.ctype.mimetype.to_ascii_lowercase().as_str() {
        "text/cloud-config" => out.push(Part::CloudConfig(text)),
        "text/x-shellscript" => out.push(Part::Script(text)),
        _ if is_cloud_config(&text) => out.push(Part::CloudConfig(text)),
        _ if is_script(&text) => out.push(Part::Script(text)),
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn header_rules() {
        assert!(is_cloud_config("#cloud-config  \nfoo: 1"));
        assert!(is_cloud_config("#cloud-config\r\n"));
        for bad in [
            "\n#cloud-config",
            "\u{feff}#cloud-config",
            "# cloud-config",
            "#cloud-config:",
        ] {
            assert!(!is_cloud_config(bad), "{bad:?}");
        }
        assert_eq!(classify(b"").unwrap(), UserData::Empty);
        assert_eq!(
            classify(br#"{"ignitionVersion":1}"#).unwrap(),
            UserData::Ignition
        );
        assert_eq!(
            classify(br#"{"ignition":{"version":"3.4.0"}}"#).unwrap(),
            UserData::Ignition
        );
        assert!(matches!(classify(b"{}").unwrap(), UserData::Unknown(_)));
        assert!(matches!(
            classify(b"#!/bin/sh\necho").unwrap(),
            UserData::Script(_)
        ));
    }

    #[test]
    fn gzip_is_decompressed_and_bounded() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(b"#cloud-config\nhostname: a\n").unwrap();
        let gz = enc.finish().unwrap();
        assert!(matches!(classify(&gz).unwrap(), UserData::CloudConfig(_)));
        assert!(matches!(
            classify(b"\x1f\x8bgarbage"),
            Err(UserDataError::Gzip(_))
        ));
    }
}

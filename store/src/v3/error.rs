//! v3 errors with the exact gRPC codes and messages etcd sends: clients map errors back
//! to their types by message text, so these strings are part of the protocol.

use tonic::{Code, Status};

/// An error of the v3 API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum V3Error {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExist,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    #[error("etcdserver: not leader")]
    NotLeader,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: can only promote a learner member")]
    NotLearner,
    #[error("etcdserver: {0}")]
    Unsupported(&'static str),
}

impl V3Error {
    pub fn code(&self) -> Code {
        match self {
            V3Error::EmptyKey
            | V3Error::KeyNotFound
            | V3Error::ValueProvided
            | V3Error::LeaseProvided
            | V3Error::TooManyOps
            | V3Error::DuplicateKey
            | V3Error::RequestTooLarge => Code::InvalidArgument,
            V3Error::Compacted | V3Error::FutureRev | V3Error::LeaseTtlTooLarge => Code::OutOfRange,
            V3Error::LeaseNotFound | V3Error::MemberNotFound => Code::NotFound,
            V3Error::LeaseExist | V3Error::PeerUrlExists | V3Error::BadLeaderTransferee => {
                Code::FailedPrecondition
            }
            V3Error::Timeout | V3Error::NoLeader | V3Error::LeaderChanged | V3Error::NotLeader => {
                Code::Unavailable
            }
            V3Error::LearnerNotReady | V3Error::NotLearner => Code::FailedPrecondition,
            V3Error::Unsupported(_) => Code::Unimplemented,
        }
    }
}

impl From<V3Error> for Status {
    fn from(e: V3Error) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

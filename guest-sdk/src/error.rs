//! The error a plugin returns, and how it becomes the WIT `provider-error`.

use crate::bindings::ProviderError;
use crate::bindings::addon::provider::types::Unavailable;

/// Result of a [`Provider`](crate::Provider) function.
pub type Result<T, E = Error> = core::result::Result<T, E>;

/// Why a call was refused. Any `std::error::Error` (including [`KvError`](crate::KvError))
/// converts into [`Error::Internal`], so `?` works on everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The request or plan is not acceptable; the platform is told why (HTTP 422).
    Invalid(String),
    /// Try again later, or the change is not instant (HTTP 503), optionally with a page
    /// that explains it.
    Unavailable {
        /// What the platform shows the user.
        message: String,
        /// A page that explains it, if any.
        docs_url: Option<String>,
    },
    /// The plugin failed (HTTP 500).
    Internal(String),
}

impl Error {
    /// [`Error::Invalid`] with this message.
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::Invalid(message.into())
    }

    /// [`Error::Unavailable`] with this message and no page.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Error::Unavailable { message: message.into(), docs_url: None }
    }

    /// [`Error::Unavailable`] with this message and a page that explains it.
    pub fn unavailable_with_docs(message: impl Into<String>, docs_url: impl Into<String>) -> Self {
        Error::Unavailable { message: message.into(), docs_url: Some(docs_url.into()) }
    }

    /// [`Error::Internal`] with this message.
    pub fn internal(message: impl Into<String>) -> Self {
        Error::Internal(message.into())
    }

    #[doc(hidden)]
    pub fn into_wit(self) -> ProviderError {
        match self {
            Error::Invalid(m) => ProviderError::InvalidRequest(m),
            Error::Unavailable { message, docs_url } => ProviderError::Unavailable(Unavailable { message, docs_url }),
            Error::Internal(m) => ProviderError::Internal(m),
        }
    }
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Invalid(m) => write!(f, "invalid request: {m}"),
            Error::Unavailable { message, .. } => write!(f, "unavailable: {message}"),
            Error::Internal(m) => write!(f, "internal error: {m}"),
        }
    }
}

impl<E: std::error::Error> From<E> for Error {
    fn from(e: E) -> Self {
        Error::Internal(e.to_string())
    }
}

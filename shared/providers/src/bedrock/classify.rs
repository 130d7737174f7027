//! Every failure of a Bedrock call, classified once: the SDK's error (a modelled exception, a
//! dispatch or timeout failure, an unreadable response, a request that could not be built) into
//! a [`ProviderError`]. The exception name is the error's `code`; the HTTP status comes from the
//! raw response when there is one (an exception inside an event stream has none).
//! Reference: <https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html#API_runtime_Converse_Errors>
//! and <https://docs.aws.amazon.com/bedrock/latest/userguide/troubleshooting-api-error-codes.html>.

use aws_sdk_bedrockruntime::config::http::HttpResponse;
use aws_sdk_bedrockruntime::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_bedrockruntime::types::error::ConverseStreamOutputError;
use aws_smithy_types::event_stream::RawMessage;
use taskexec_core::error::ProviderError;

use crate::answer::cap;
use crate::http::failure::Class;

/// The class of a Bedrock exception, by name.
///
/// - `ThrottlingException` (429) is a rate limit. `ModelNotReadyException` is also sent as 429,
///   but it says the model is warming up, not that the caller is too fast: transient.
/// - `ModelErrorException` (424, "an error while processing the model") is transient: the same
///   request usually succeeds on another try, and it counts toward the breaker.
/// - `ServiceQuotaExceededException` is permanent: it reports an account quota (not a rate) that
///   backoff within one task's retries does not lift; it needs a quota increase.
/// - Unknown names fall back to the status: 429 rate limited, 408/5xx transient, else permanent.
///   Without a status — an exception inside a ConverseStream, unknown or unnamed — it is
///   transient, as every adapter's in-stream errors: the stream broke, the request may be fine.
fn class_of(code: Option<&str>, status: Option<u16>) -> Class {
    match code {
        Some("ThrottlingException") => Class::RateLimited,
        Some(
            "ServiceUnavailableException"
            | "ModelNotReadyException"
            | "ModelTimeoutException"
            | "InternalServerException"
            | "ModelStreamErrorException"
            | "ModelErrorException",
        ) => Class::Transient,
        Some(
            "ValidationException"
            | "AccessDeniedException"
            | "ResourceNotFoundException"
            | "ServiceQuotaExceededException",
        ) => Class::Permanent,
        _ => match status {
            Some(429) => Class::RateLimited,
            Some(408 | 500..=599) | None => Class::Transient,
            Some(_) => Class::Permanent,
        },
    }
}

/// The error for a failed SDK call, with the raw response's status when there was one.
pub(crate) fn sdk_error<E>(error: &SdkError<E, HttpResponse>) -> ProviderError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let status = error.raw_response().map(|r| r.status().as_u16());
    failure(error, status, error.code().map(str::to_owned))
}

/// The error for a failure while reading a ConverseStream. An exception event names itself in
/// `:exception-type`, and its payload may carry no `__type`: the variant gives the name then.
pub(crate) fn stream_error(error: &SdkError<ConverseStreamOutputError, RawMessage>) -> ProviderError {
    let variant = error.as_service_error().and_then(|e| match e {
        ConverseStreamOutputError::ThrottlingException(_) => Some("ThrottlingException"),
        ConverseStreamOutputError::ServiceUnavailableException(_) => Some("ServiceUnavailableException"),
        ConverseStreamOutputError::InternalServerException(_) => Some("InternalServerException"),
        ConverseStreamOutputError::ModelStreamErrorException(_) => Some("ModelStreamErrorException"),
        ConverseStreamOutputError::ValidationException(_) => Some("ValidationException"),
        _ => None,
    });
    failure(error, None, error.code().or(variant).map(str::to_owned))
}

fn failure<E, R>(error: &SdkError<E, R>, status: Option<u16>, code: Option<String>) -> ProviderError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    // The whole cause chain, so a TLS or DNS failure is named; no credential is part of it.
    let detail = cap(&DisplayErrorContext(error).to_string());
    match error {
        SdkError::ServiceError(_) => {
            let detail = match error.message() {
                Some(message) => cap(&format!("{}: {message}", code.as_deref().unwrap_or("error"))),
                None => detail,
            };
            exception(code, status, detail)
        }
        // Not sent: a region, credentials or endpoint missing. Another try would fail the same way.
        SdkError::ConstructionFailure(_) => ProviderError::permanent(detail),
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => ProviderError::transient(detail),
        // A response arrived but could not be read (cut, garbled): worth another try.
        SdkError::ResponseError(_) => Class::Transient.error(status, None, detail, None),
        _ => ProviderError::transient(detail),
    }
}

/// The error for exception `code`.
fn exception(code: Option<String>, status: Option<u16>, detail: String) -> ProviderError {
    class_of(code.as_deref(), status).error(status, code, detail, None)
}

#[cfg(test)]
mod tests {
    use taskexec_core::error::ErrorClass;

    use super::*;

    fn class(code: &str, status: u16) -> ErrorClass {
        exception(Some(code.into()), Some(status), "m".into()).class()
    }

    #[test]
    fn exceptions_map_to_their_class() {
        assert_eq!(class("ThrottlingException", 429), ErrorClass::RateLimited);
        assert_eq!(class("ModelNotReadyException", 429), ErrorClass::Transient);
        for code in
            ["ServiceUnavailableException", "ModelTimeoutException", "InternalServerException", "ModelErrorException"]
        {
            assert_eq!(class(code, 500), ErrorClass::Transient, "{code}");
        }
        for code in [
            "ValidationException",
            "AccessDeniedException",
            "ResourceNotFoundException",
            "ServiceQuotaExceededException",
        ] {
            assert_eq!(class(code, 400), ErrorClass::Permanent, "{code}");
        }
    }

    #[test]
    fn unknown_exceptions_fall_back_to_the_status() {
        assert_eq!(class("SomethingNew", 429), ErrorClass::RateLimited);
        assert_eq!(class("SomethingNew", 502), ErrorClass::Transient);
        assert_eq!(class("SomethingNew", 400), ErrorClass::Permanent);
        assert_eq!(exception(None, None, "m".into()).class(), ErrorClass::Transient);
    }

    #[test]
    fn unknown_stream_exceptions_are_transient() {
        use aws_smithy_types::error::ErrorMetadata;

        let in_stream = |code: Option<&str>| {
            let mut meta = ErrorMetadata::builder().message("m");
            if let Some(code) = code {
                meta = meta.code(code);
            }
            let error = ConverseStreamOutputError::generic(meta.build());
            stream_error(&SdkError::service_error(error, RawMessage::Invalid(None)))
        };
        let e = in_stream(Some("SomethingNewException"));
        assert_eq!(
            (e.class(), e.to_task_error().provider_code.as_deref()),
            (ErrorClass::Transient, Some("SomethingNewException"))
        );
        assert_eq!(in_stream(None).class(), ErrorClass::Transient);
        assert_eq!(in_stream(Some("ValidationException")).class(), ErrorClass::Permanent);
        assert_eq!(in_stream(Some("ThrottlingException")).class(), ErrorClass::RateLimited);
    }
}

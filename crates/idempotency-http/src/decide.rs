//! The first step of every request, without I/O: does the protocol cover it, is it refused at
//! once (the 400s of DESIGN §5 and the scope extractor's refusals), or does it run protected?
//!
//! A plain function of the request head and the settings, so each branch is unit tested here
//! without a server, a store or a runtime.

use http::request::Parts;
use idempotency_core::{IdempotencyError, IdempotencyKey, Scope};

use crate::problem::Problem;
use crate::scope::ScopeExtractor;
use crate::settings::Settings;

/// What to do with a request.
#[derive(Debug)]
pub(crate) enum Decision {
    /// Not covered (method, or no key where keys are optional): the inner service alone.
    PassThrough,
    /// Refused before anything runs (missing, ambiguous or malformed key, scope refused).
    Answer(Problem),
    /// Covered: the protocol runs for this key in this scope.
    Protect { key: IdempotencyKey, scope: Scope },
}

/// Decide from the request head: method, the key header(s), then the scope (asked last, so a
/// request without a key is never sent to the extractor).
pub(crate) fn decide<E: ScopeExtractor>(parts: &Parts, settings: &Settings, scope: &E) -> Decision {
    if !settings.methods.contains(&parts.method) {
        return Decision::PassThrough;
    }
    let mut values = parts.headers.get_all(&settings.header).iter();
    let Some(value) = values.next() else {
        return if settings.key_required {
            Decision::Answer(Problem::missing_key(settings.header.as_str()))
        } else {
            Decision::PassThrough
        };
    };
    let extra = values.count();
    if extra > 0 {
        return Decision::Answer(Problem::multiple_keys(settings.header.as_str(), extra + 1));
    }
    let key = match IdempotencyKey::from_header_value(value.as_bytes()) {
        Ok(key) => key,
        Err(e) => return Decision::Answer(Problem::from_engine(&IdempotencyError::InvalidKey(e))),
    };
    match scope.extract(parts) {
        Ok(scope) => Decision::Protect { key, scope },
        Err(rejection) => Decision::Answer(Problem::new(
            rejection.status,
            "scope-rejected",
            "Request not accepted",
            rejection.detail,
        )),
    }
}

#[cfg(test)]
mod tests {
    use http::{Method, Request, StatusCode};

    use super::*;
    use crate::scope::{GlobalScope, ScopeRejection};

    fn head(method: Method, keys: &[&str]) -> Parts {
        let mut request = Request::builder().method(method).uri("/orders");
        for key in keys {
            request = request.header("idempotency-key", *key);
        }
        request
            .body(())
            .map(|r| r.into_parts().0)
            .unwrap_or_else(|_| unreachable!())
    }

    /// The problem slug and status of an `Answer`, or what else was decided.
    fn answer(decision: Decision) -> Result<(StatusCode, String), String> {
        match decision {
            Decision::Answer(problem) => Ok((problem.status, problem.slug.to_owned())),
            Decision::PassThrough => Err("pass through".into()),
            Decision::Protect { key, .. } => Err(format!("protect {}", key.as_str())),
        }
    }

    #[test]
    fn uncovered_methods_pass_through() {
        let decision = decide(
            &head(Method::GET, &["k"]),
            &Settings::default(),
            &GlobalScope,
        );
        assert!(matches!(decision, Decision::PassThrough));
    }

    #[test]
    fn a_missing_key_is_400_or_passes_when_optional() {
        let settings = Settings::default();
        assert_eq!(
            answer(decide(&head(Method::POST, &[]), &settings, &GlobalScope)),
            Ok((StatusCode::BAD_REQUEST, "missing-key".into()))
        );
        let optional = Settings {
            key_required: false,
            ..Settings::default()
        };
        let decision = decide(&head(Method::POST, &[]), &optional, &GlobalScope);
        assert!(matches!(decision, Decision::PassThrough));
    }

    #[test]
    fn several_or_malformed_keys_are_400() {
        let settings = Settings::default();
        assert_eq!(
            answer(decide(
                &head(Method::POST, &["a", "b"]),
                &settings,
                &GlobalScope
            )),
            Ok((StatusCode::BAD_REQUEST, "multiple-keys".into()))
        );
        assert_eq!(
            answer(decide(
                &head(Method::PUT, &["\"open"]),
                &settings,
                &GlobalScope
            )),
            Ok((StatusCode::BAD_REQUEST, "invalid-key".into()))
        );
    }

    /// One header line holding a list (or two lines a proxy joined) is refused like two lines.
    #[test]
    fn a_list_in_one_header_is_multiple_keys() {
        let settings = Settings::default();
        for value in ["t-1, t-2", r#""t-1", "t-2""#, r#""t-1";v=1, t-2"#] {
            assert_eq!(
                answer(decide(
                    &head(Method::POST, &[value]),
                    &settings,
                    &GlobalScope
                )),
                Ok((StatusCode::BAD_REQUEST, "multiple-keys".into())),
                "{value}"
            );
        }
    }

    /// RFC 8941 parameters on the quoted key are ignored: the key is the string alone.
    #[test]
    fn parameters_on_a_quoted_key_are_ignored() {
        match decide(
            &head(Method::POST, &[r#""k";a=1;b"#]),
            &Settings::default(),
            &GlobalScope,
        ) {
            Decision::Protect { key, .. } => assert_eq!(key.as_str(), "k"),
            other => panic!("expected protect, got {other:?}"),
        }
        assert_eq!(
            answer(decide(
                &head(Method::POST, &[r#""k";A=1"#]),
                &Settings::default(),
                &GlobalScope
            )),
            Ok((StatusCode::BAD_REQUEST, "invalid-key".into()))
        );
    }

    #[test]
    fn the_scope_is_asked_last_and_its_refusal_is_the_answer() {
        let refuse = |_: &Parts| -> Result<Scope, ScopeRejection> {
            Err(ScopeRejection::unauthorized("sign in first"))
        };
        let settings = Settings::default();
        assert_eq!(
            answer(decide(&head(Method::POST, &["k"]), &settings, &refuse)),
            Ok((StatusCode::UNAUTHORIZED, "scope-rejected".into()))
        );
        // No key: the 400 wins, the extractor is never asked.
        assert_eq!(
            answer(decide(&head(Method::POST, &[]), &settings, &refuse)),
            Ok((StatusCode::BAD_REQUEST, "missing-key".into()))
        );
    }

    #[test]
    fn a_quoted_key_is_protected_under_its_scope() {
        let alice = |_: &Parts| -> Result<Scope, ScopeRejection> { Ok(Scope::new("alice")) };
        match decide(
            &head(Method::PATCH, &["\"abc\""]),
            &Settings::default(),
            &alice,
        ) {
            Decision::Protect { key, scope } => {
                assert_eq!(key.as_str(), "abc");
                assert_eq!(scope, Scope::new("alice"));
            }
            other => panic!("expected protect, got {other:?}"),
        }
    }
}

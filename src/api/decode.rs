//! Request decoding every front door shares: strict JSON bodies whose errors name the field
//! and never echo a value, and decoded query or form pairs.

use http::StatusCode;

use super::error::ApiError;

/// Parses a JSON body strictly (unknown fields, trailing bytes and wrong types are errors
/// naming the field, never echoing a value).
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    // The path to a bad field is tracked only once the body is known to be bad: tracking it
    // on every request cost more than the rest of the parse.
    let v = match T::deserialize(&mut de) {
        Ok(v) => v,
        Err(_) => {
            let mut again = serde_json::Deserializer::from_slice(body);
            return Err(match serde_path_to_error::deserialize::<_, T>(&mut again) {
                Err(e) => json_error(e),
                Ok(_) => ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", "invalid JSON"),
            });
        }
    };
    de.end().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "trailing characters after the JSON body",
        )
    })?;
    Ok(v)
}

/// Turns serde's error into one that names the field and never echoes a value (a mistyped
/// code would otherwise come back in the error, and be logged by the caller).
pub fn json_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let inner = e.inner();
    let text = inner.to_string();
    let text = text.split(" at line ").next().unwrap_or("").to_string();
    match inner.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not valid JSON ({text})"),
        ),
        serde_json::error::Category::Io => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "the body could not be read",
        ),
        serde_json::error::Category::Data => {
            if let Some(rest) = text.strip_prefix("missing field `") {
                let field = rest.split('`').next().unwrap_or("");
                return ApiError::field("missing_field", field, format!("{field} is required"));
            }
            if let Some(rest) = text.strip_prefix("unknown field `") {
                let field = rest.split('`').next().unwrap_or("").to_string();
                return ApiError::field(
                    "unknown_field",
                    field.clone(),
                    format!("{field} is not a field of this request"),
                );
            }
            let expected = text
                .split_once(", expected ")
                .map(|(_, e)| e.to_string())
                .unwrap_or_else(|| "another type".into());
            let field = if path == "." {
                "(body)".to_string()
            } else {
                path
            };
            ApiError::field(
                "invalid_field",
                field.clone(),
                format!("{field} has the wrong type or value (expected {expected})"),
            )
        }
    }
}

/// Decoded query pairs.
pub fn url_pairs(q: &str) -> Vec<(String, String)> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(q).unwrap_or_default()
}

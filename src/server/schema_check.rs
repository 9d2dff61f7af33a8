//! Checks a JSON body against the generated schema of the operation *before* poem-openapi
//! parses it, so that type errors name the field (`param`) in the envelope — poem-openapi's own
//! messages do not for wrong types ("Expected input type integer ..."). The schema is the
//! registry's, so this cannot drift from `openapi.json`.

use poem_openapi::registry::{MetaSchema, MetaSchemaRef, Registry};
use poem_openapi::types::Type;
use serde_json::Value;

use super::error::ApiError;

pub struct BodySchema {
    registry: Registry,
    root: MetaSchemaRef,
}

impl BodySchema {
    pub fn of<T: Type>() -> Self {
        let mut registry = Registry::new();
        T::register(&mut registry);
        Self {
            registry,
            root: T::schema_ref(),
        }
    }

    fn resolve<'a>(&'a self, s: &'a MetaSchemaRef) -> Option<&'a MetaSchema> {
        match s {
            MetaSchemaRef::Inline(m) => Some(m),
            MetaSchemaRef::Reference(name) => self.registry.schemas.get(name),
        }
    }

    /// Required fields present and not null; every known field of the right type and range.
    /// Unknown fields are ignored (OpenAI clients send fields we do not use).
    pub fn check(&self, body: &[u8]) -> Result<(), ApiError> {
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::new(
                poem::http::StatusCode::BAD_REQUEST,
                format!("the request body is not valid JSON: {e}"),
            )
            .code("invalid_json")
        })?;
        let Some(obj) = value.as_object() else {
            return Err(ApiError::new(
                poem::http::StatusCode::BAD_REQUEST,
                "the request body must be a JSON object",
            )
            .code("invalid_json"));
        };
        let Some(schema) = self.resolve(&self.root) else {
            return Ok(());
        };
        for name in &schema.required {
            if obj.get(*name).is_none_or(Value::is_null) {
                return Err(ApiError::invalid(name, format!("`{name}` is required"))
                    .code("missing_required_parameter"));
            }
        }
        for (name, sref) in &schema.properties {
            if let Some(v) = obj.get(*name) {
                self.check_value(name, v, sref)?;
            }
        }
        Ok(())
    }

    fn check_value(&self, name: &str, v: &Value, sref: &MetaSchemaRef) -> Result<(), ApiError> {
        let Some(s) = self.resolve(sref) else {
            return Ok(());
        };
        if v.is_null() {
            return if s.nullable
                || s.all_of
                    .iter()
                    .chain(&s.any_of)
                    .any(|r| self.resolve(r).is_some_and(|m| m.nullable))
            {
                Ok(())
            } else {
                Err(ApiError::invalid(
                    name,
                    format!("`{name}` must not be null"),
                ))
            };
        }
        for r in &s.all_of {
            self.check_value(name, v, r)?;
        }
        if !s.any_of.is_empty()
            && !s
                .any_of
                .iter()
                .any(|r| self.check_value(name, v, r).is_ok())
        {
            return Err(ApiError::invalid(
                name,
                format!("`{name}` has an invalid value"),
            ));
        }
        let bad = |what: String| Err(ApiError::invalid(name, format!("`{name}` {what}, got {v}")));
        if !s.enum_items.is_empty() && !s.enum_items.contains(v) {
            let allowed: Vec<String> = s.enum_items.iter().map(Value::to_string).collect();
            return bad(format!("must be one of {}", allowed.join(", ")));
        }
        let range = |x: f64| s.minimum.is_none_or(|m| x >= m) && s.maximum.is_none_or(|m| x <= m);
        let range_text = || match (s.minimum, s.maximum) {
            (Some(a), Some(b)) => format!(" between {a} and {b}"),
            (Some(a), None) => format!(" of at least {a}"),
            (None, Some(b)) => format!(" of at most {b}"),
            (None, None) => String::new(),
        };
        match s.ty {
            "string" => {
                let Some(text) = v.as_str() else {
                    return bad("must be a string".into());
                };
                let len = text.chars().count();
                if s.min_length.is_some_and(|m| len < m) {
                    return Err(ApiError::invalid(
                        name,
                        format!("`{name}` must not be empty"),
                    ));
                }
                if s.max_length.is_some_and(|m| len > m) {
                    return Err(ApiError::invalid(
                        name,
                        format!(
                            "`{name}` is longer than {} characters",
                            s.max_length.unwrap_or(0)
                        ),
                    ));
                }
            }
            "integer" => {
                let x = v
                    .as_i64()
                    .map(|x| x as f64)
                    .or_else(|| v.as_u64().map(|x| x as f64));
                match x {
                    Some(x) if range(x) => {}
                    _ => return bad(format!("must be an integer{}", range_text())),
                }
            }
            "number" => match v.as_f64() {
                Some(x) if range(x) => {}
                _ => return bad(format!("must be a number{}", range_text())),
            },
            "boolean" if !v.is_boolean() => return bad("must be true or false".into()),
            _ => {}
        }
        Ok(())
    }
}

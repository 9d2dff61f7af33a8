//! The `scheduler` request field: a string enum whose values are every name in the scheduler
//! table ([`crate::schedulers::REGISTRY`]: kiln's ids, diffusers' class names, A1111's labels),
//! so the spec lists exactly what the server takes.
//!
//! Over HTTP the match is exact. The table's own parser ignores case, spaces, `-` and `_`
//! (kind to people typing `--scheduler` on the CLI), but a JSON Schema enum cannot say that, and
//! every other enum of this API is exact; the table has each name as diffusers and A1111 spell
//! it, so copied names work verbatim.

use std::borrow::Cow;

use poem_openapi::registry::{MetaSchema, MetaSchemaRef, Registry};
use poem_openapi::types::{
    ParseError, ParseFromJSON, ParseFromMultipartField, ParseResult, ToJSON, Type,
};
use serde_json::Value;

use crate::schedulers::REGISTRY;

/// A scheduler name from the table, spelled as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerName(pub String);

/// Every accepted spelling, in table order.
fn names() -> impl Iterator<Item = &'static str> {
    REGISTRY.iter().flat_map(|(_, names)| names.iter().copied())
}

impl SchedulerName {
    fn parse(s: &str) -> Result<Self, String> {
        match names().find(|n| *n == s) {
            Some(n) => Ok(Self(n.to_string())),
            None => Err(format!(
                "unknown scheduler `{s}`; known: {}",
                names().collect::<Vec<_>>().join(", ")
            )),
        }
    }
}

impl Type for SchedulerName {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        "SchedulerName".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Reference(Self::name().into_owned())
    }

    fn register(registry: &mut Registry) {
        registry.create_schema::<Self, _>(Self::name().into_owned(), |_| MetaSchema {
            description: Some(
                "A sampler: kiln's id, diffusers' class name or A1111's label, spelled exactly \
                 as listed.",
            ),
            enum_items: names().map(|n| Value::String(n.into())).collect(),
            ..MetaSchema::new("string")
        });
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }

    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl ParseFromJSON for SchedulerName {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            Some(Value::String(s)) => Self::parse(&s).map_err(ParseError::custom),
            other => Err(ParseError::expected_type(other.unwrap_or_default())),
        }
    }
}

impl ParseFromMultipartField for SchedulerName {
    async fn parse_from_multipart(field: Option<poem::web::Field>) -> ParseResult<Self> {
        match field {
            Some(f) => {
                let text = f.text().await.map_err(ParseError::custom)?;
                Self::parse(&text).map_err(ParseError::custom)
            }
            None => Err(ParseError::expected_input()),
        }
    }
}

impl ToJSON for SchedulerName {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(self.0.clone()))
    }
}

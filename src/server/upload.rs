//! Multipart file parts that may repeat: `image` (one or more) and openai-python's `image[]`.
//! Decoding them (with size limits) is `image_io::decode`'s.

use std::marker::PhantomData;

use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::types::multipart::Upload;
use poem_openapi::types::{ParseError, ParseFromMultipartField, ParseResult, Type};

/// What the spec says of a repeatable file part: whether it is required, and its schema.
pub trait PartsSpec: Send + Sync {
    const IS_REQUIRED: bool;
    fn name() -> &'static str;
    fn schema_ref() -> MetaSchemaRef;
}

/// The parts of one field name, in order; parsing takes any number, and what must be there is
/// the handler's to check (see [`ImageParts`]).
#[derive(Debug)]
pub struct Parts<S>(pub Vec<Upload>, PhantomData<S>);

impl<S> Default for Parts<S> {
    fn default() -> Self {
        Self(Vec::new(), PhantomData)
    }
}

/// Zero or more repeated file parts. Unlike `Vec<Upload>`, optional in the generated spec.
#[derive(Debug)]
pub struct Optional;

impl PartsSpec for Optional {
    const IS_REQUIRED: bool = false;

    fn name() -> &'static str {
        "[string_binary]"
    }

    fn schema_ref() -> MetaSchemaRef {
        <Vec<Upload> as Type>::schema_ref()
    }
}

/// One file part, or the part repeated: OpenAI's schema for `image` (`anyOf`: a binary, or an
/// array of them), required as there; kiln's edits take one image and refuse more. A form
/// without it still
/// parses, because openai-python names repeated parts `image[]`, which stand in for it; the
/// handler refuses a form with neither, naming `image`.
#[derive(Debug)]
pub struct OneOrMore;

impl PartsSpec for OneOrMore {
    const IS_REQUIRED: bool = true;

    fn name() -> &'static str {
        "string_binary_or_array"
    }

    fn schema_ref() -> MetaSchemaRef {
        let many = MetaSchema {
            min_items: Some(1),
            ..<Vec<Upload> as Type>::schema_ref().unwrap_inline().clone()
        };
        MetaSchemaRef::Inline(Box::new(MetaSchema {
            any_of: vec![
                <Upload as Type>::schema_ref(),
                MetaSchemaRef::Inline(Box::new(many)),
            ],
            ..MetaSchema::ANY
        }))
    }
}

/// `image[]`.
pub type UploadList = Parts<Optional>;
/// `image`.
pub type ImageParts = Parts<OneOrMore>;

impl<S: PartsSpec> Type for Parts<S> {
    const IS_REQUIRED: bool = S::IS_REQUIRED;
    type RawValueType = Self;
    type RawElementValueType = Upload;

    fn name() -> std::borrow::Cow<'static, str> {
        S::name().into()
    }

    fn schema_ref() -> MetaSchemaRef {
        S::schema_ref()
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }

    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(self.0.iter())
    }
}

impl<S: PartsSpec> ParseFromMultipartField for Parts<S> {
    async fn parse_from_multipart(field: Option<poem::web::Field>) -> ParseResult<Self> {
        let parts = Self::default();
        match field {
            Some(f) => parts.parse_from_repeated_field(f).await,
            None => Ok(parts),
        }
    }

    async fn parse_from_repeated_field(mut self, field: poem::web::Field) -> ParseResult<Self> {
        self.0.push(
            Upload::parse_from_multipart(Some(field))
                .await
                .map_err(ParseError::propagate)?,
        );
        Ok(self)
    }
}

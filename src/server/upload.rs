//! Multipart uploads: repeated `image[]` parts. Decoding them (with size limits) is
//! `image_io::decode`'s.

use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::types::multipart::Upload;
use poem_openapi::types::{ParseError, ParseFromMultipartField, ParseResult, Type};

/// Zero or more repeated file parts. Unlike `Vec<Upload>`, optional in the generated spec.
#[derive(Default, Debug)]
pub struct UploadList(pub Vec<Upload>);

impl Type for UploadList {
    const IS_REQUIRED: bool = false;
    type RawValueType = Self;
    type RawElementValueType = Upload;

    fn name() -> std::borrow::Cow<'static, str> {
        "[string_binary]".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        <Vec<Upload> as Type>::schema_ref()
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

impl ParseFromMultipartField for UploadList {
    async fn parse_from_multipart(field: Option<poem::web::Field>) -> ParseResult<Self> {
        match field {
            Some(f) => Ok(Self(vec![
                Upload::parse_from_multipart(Some(f))
                    .await
                    .map_err(ParseError::propagate)?,
            ])),
            None => Ok(Self(Vec::new())),
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

/// The `image` part of an edit form: one file part, or the part repeated for several images
/// (the first one is edited). Required in the spec, as in OpenAI's, whose schema this is
/// (`anyOf`: a binary, or an array of them). Parsing leaves a missing part to the handler,
/// because openai-python names repeated parts `image[]`, which stand in for it.
#[derive(Default, Debug)]
pub struct ImageParts(pub Vec<Upload>);

impl Type for ImageParts {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Upload;

    fn name() -> std::borrow::Cow<'static, str> {
        "string_binary_or_array".into()
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

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }

    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(self.0.iter())
    }
}

impl ParseFromMultipartField for ImageParts {
    async fn parse_from_multipart(field: Option<poem::web::Field>) -> ParseResult<Self> {
        Ok(Self(
            UploadList::parse_from_multipart(field)
                .await
                .map_err(ParseError::propagate)?
                .0,
        ))
    }

    async fn parse_from_repeated_field(self, field: poem::web::Field) -> ParseResult<Self> {
        Ok(Self(
            UploadList(self.0)
                .parse_from_repeated_field(field)
                .await
                .map_err(ParseError::propagate)?
                .0,
        ))
    }
}

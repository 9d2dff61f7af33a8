//! The input images of edits and variations, however they came: multipart parts, or the
//! `image_url`s of a JSON edit, which must be `data:` URLs (kiln fetches nothing on a client's
//! behalf). Each is read, decoded within `--max-upload-side`, and the edit [`prepare`]d.

use poem::http::StatusCode;
use poem_openapi::Object;
use poem_openapi::types::multipart::Upload;

use super::AppState;
use super::error::ApiError;
use super::jobs::{GenParams, Prepared, prepare};
use crate::engine::EditInput;
use crate::image_io::{self, mask::MaskConvention};

/// An image of a JSON edit: OpenAI's `{image_url}` or `{file_id}`.
#[derive(Object, Debug, Clone)]
pub struct ImageRef {
    /// A `data:` URL (`data:image/png;base64,…`); other schemes are refused.
    #[oai(validator(max_length = 67108864))]
    pub image_url: Option<String>,
    /// OpenAI Files API ids are refused: kiln has no Files API.
    #[oai(validator(max_length = 256))]
    pub file_id: Option<String>,
}

/// One input image as the client sent it.
pub enum ImageSource {
    Part(Upload),
    Ref(ImageRef),
}

/// What an edit or variation sends besides its text fields. `param` names each image in errors.
pub struct EditSources {
    pub images: Vec<(String, ImageSource)>,
    pub mask: Option<ImageSource>,
}

/// The bytes of a `data:` URL; anything else is a 400 naming `param`.
fn data_url_bytes(url: &str, param: &str) -> Result<Vec<u8>, ApiError> {
    let scheme = url.split_once(':').map(|(s, _)| s.trim());
    if !scheme.is_some_and(|s| s.eq_ignore_ascii_case("data")) {
        let shown = scheme.filter(|s| s.len() <= 16).unwrap_or("none");
        return Err(ApiError::invalid(
            param,
            format!(
                "`{param}` must be a data: URL (data:image/png;base64,...): kiln does not fetch \
                 images from the network (scheme `{shown}`)"
            ),
        )
        .code("unsupported_url"));
    }
    let bad = |why: String| ApiError::invalid(param, format!("`{param}`: {why}"));
    let parsed = data_url::DataUrl::process(url).map_err(|e| bad(format!("{e:?}")))?;
    let (bytes, _) = parsed
        .decode_to_vec()
        .map_err(|e| bad(format!("invalid base64: {e:?}")))?;
    Ok(bytes)
}

async fn bytes(src: ImageSource, param: &str) -> Result<Vec<u8>, ApiError> {
    match src {
        ImageSource::Part(upload) => upload
            .into_vec()
            .await
            .map_err(|e| ApiError::invalid(param, format!("cannot read `{param}`: {e}"))),
        ImageSource::Ref(ImageRef {
            image_url: Some(url),
            file_id: None,
        }) => data_url_bytes(&url, param),
        ImageSource::Ref(ImageRef {
            file_id: Some(_), ..
        }) => Err(ApiError::invalid(
            param,
            format!(
                "`{param}.file_id` needs OpenAI's Files API, which kiln does not have: send the \
                 image as `image_url` with a data: URL"
            ),
        )
        .code("unsupported")),
        ImageSource::Ref(ImageRef { .. }) => Err(ApiError::invalid(
            param,
            format!("`{param}` needs an `image_url`"),
        )),
    }
}

/// Reads and decodes one input image; errors name `param`.
pub async fn decode(
    src: ImageSource,
    param: &str,
    max_side: u32,
) -> Result<image::DynamicImage, ApiError> {
    let bytes = bytes(src, param).await?;
    let what = format!("`{param}`");
    let field = param.to_string();
    tokio::task::spawn_blocking(move || image_io::decode(&bytes, &what, max_side))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| match e {
            crate::Error::InvalidArgument(message) => ApiError::invalid(&field, message),
            other => ApiError::invalid(&field, other.to_string()),
        })
}

/// An edit or variation: its one input image and optional mask decoded, then [`prepare`]d.
/// kiln's models edit one image: more is a 400 (never a silent choice of the first).
pub async fn prepare_edit(
    state: &AppState,
    params: GenParams,
    sources: EditSources,
) -> Result<Prepared, ApiError> {
    let count = sources.images.len();
    let mut images = sources.images.into_iter();
    let Some((param, first)) = images.next() else {
        return Err(ApiError::invalid(
            "image",
            "an image is required: send it as `image` (or `image[]`)",
        ));
    };
    if count > 1 {
        return Err(ApiError::invalid(
            "image",
            format!(
                "{count} input images were sent, but kiln's models edit one image at a time: \
                 send one (and describe the others in the prompt)"
            ),
        ));
    }
    let max = state.config.max_upload_side;
    let image = decode(first, &param, max).await?;
    let mask = match sources.mask {
        None => None,
        Some(m) => Some(decode(m, "mask", max).await?),
    };
    let edit = EditInput {
        image,
        mask,
        convention: MaskConvention::Auto,
    };
    prepare(state, params, Some(edit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_urls_only() {
        let ok = data_url_bytes("data:image/png;base64,aGVsbG8=", "images[0].image_url");
        assert_eq!(ok.expect("decodes"), b"hello");
        for url in [
            "https://example.com/a.png",
            "file:///etc/passwd",
            "no-scheme",
        ] {
            let e = data_url_bytes(url, "images[0].image_url").expect_err(url);
            assert_eq!(e.param.as_deref(), Some("images[0].image_url"));
            assert_eq!(e.code.as_deref(), Some("unsupported_url"));
        }
        assert!(data_url_bytes("data:image/png;base64,@@@", "x").is_err());
    }
}

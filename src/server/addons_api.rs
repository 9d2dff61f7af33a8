//! `GET /v1/loras` (and the embeddings list): what a request may name, read from the server's
//! add-on folders on every call, so files dropped in show up without a restart.

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi, Tags};

use super::AppState;
use crate::models::sd15::lora::{LoraInfo, inspect};
use crate::models::sd15::{Embedding, Embeddings};

#[derive(Tags)]
enum AddOnTags {
    /// SD 1.5 add-ons: LoRAs and textual-inversion embeddings
    AddOns,
}

/// One LoRA of the server's LoRA folder.
#[derive(Object, Debug)]
pub struct LoraObject {
    /// What `loras[].name` and `<lora:NAME:WEIGHT>` take.
    pub id: String,
    /// Always `lora`.
    pub object: String,
    pub bytes: u64,
    /// Key layout: `kohya`, `peft` or `diffusers-old`.
    pub format: Option<String>,
    /// Largest rank of its modules.
    pub rank: Option<u32>,
    pub unet_modules: Option<u32>,
    pub text_encoder_modules: Option<u32>,
    /// Modules adapting k×k convolutions (LoCon).
    pub conv_modules: Option<u32>,
    /// Why the file cannot be used (not a LoRA, an SDXL LoRA, …); the fields above are then
    /// absent. Requests naming it get this as a 400.
    pub error: Option<String>,
}

#[derive(Object, Debug)]
pub struct LoraList {
    pub object: String,
    pub data: Vec<LoraObject>,
}

/// One textual-inversion embedding of the server's embeddings folder.
#[derive(Object, Debug)]
pub struct EmbeddingObject {
    /// The prompt word that expands to its vectors (the file name without extension).
    pub id: String,
    /// Always `textual_inversion`.
    pub object: String,
    /// Prompt tokens it takes.
    pub vectors: Option<u32>,
    /// Width of its vectors (768 for SD 1.x; a model of another width cannot use it).
    pub dim: Option<u32>,
    /// Why the file cannot be read; the fields above are then absent.
    pub error: Option<String>,
}

#[derive(Object, Debug)]
pub struct EmbeddingList {
    pub object: String,
    pub data: Vec<EmbeddingObject>,
}

pub struct AddOnsApi;

#[OpenApi]
impl AddOnsApi {
    /// List LoRAs
    ///
    /// The LoRAs requests may name (extension): files of the server's LoRA folder
    /// (`--lora-dir`, default `models/loras/`).
    #[oai(
        path = "/v1/loras",
        method = "get",
        operation_id = "listLoras",
        tag = "AddOnTags::AddOns"
    )]
    async fn list_loras(&self, state: Data<&Arc<AppState>>) -> Json<LoraList> {
        let data = state
            .config
            .rules
            .loras
            .list()
            .into_iter()
            .map(|e| {
                let info = inspect(&e.path);
                let n = |f: fn(&LoraInfo) -> usize| info.as_ref().ok().map(|i| f(i) as u32);
                LoraObject {
                    format: info.as_ref().ok().map(|i| {
                        let f: Vec<&str> = i.formats.iter().map(|f| f.as_str()).collect();
                        f.join("+")
                    }),
                    rank: n(|i| i.rank),
                    unet_modules: n(|i| i.unet_modules),
                    text_encoder_modules: n(|i| i.text_encoder_modules),
                    conv_modules: n(|i| i.conv_modules),
                    // The message without the server's path: the name says which file.
                    error: info.as_ref().err().map(|err| match err {
                        crate::Error::Lora { message, .. } => message.clone(),
                        other => other
                            .to_string()
                            .replace(&e.path.display().to_string(), &e.name),
                    }),
                    id: e.name,
                    object: "lora".into(),
                    bytes: e.bytes,
                }
            })
            .collect();
        Json(LoraList {
            object: "list".into(),
            data,
        })
    }

    /// List textual-inversion embeddings
    ///
    /// The embeddings SD prompts may use by name (extension): files of the server's embeddings
    /// folder (`--embeddings-dir`, default `models/embeddings/`). Models read the folder when
    /// they load.
    #[oai(
        path = "/v1/textual_inversions",
        method = "get",
        operation_id = "listTextualInversions",
        tag = "AddOnTags::AddOns"
    )]
    async fn list_embeddings(&self, state: Data<&Arc<AppState>>) -> Json<EmbeddingList> {
        let dir = state
            .config
            .embeddings_dir
            .as_deref()
            .filter(|d| d.is_dir());
        let files = dir
            .and_then(|d| Embeddings::files(d).ok())
            .unwrap_or_default();
        let data = files
            .iter()
            .map(|path| {
                let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
                match Embedding::read(path) {
                    Ok(e) => EmbeddingObject {
                        id: e.name.clone(),
                        object: "textual_inversion".into(),
                        vectors: Some(e.count() as u32),
                        dim: Some(e.dim as u32),
                        error: None,
                    },
                    Err(err) => EmbeddingObject {
                        id: stem.unwrap_or_default(),
                        object: "textual_inversion".into(),
                        vectors: None,
                        dim: None,
                        // Without the server's path: the id says which file.
                        error: Some(
                            err.to_string()
                                .replace(&format!("{}: ", path.display()), ""),
                        ),
                    },
                }
            })
            .collect();
        Json(EmbeddingList {
            object: "list".into(),
            data,
        })
    }
}

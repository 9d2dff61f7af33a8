//! `GET /v1/loras` (and the embeddings list): what a request may name, read from the server's
//! add-on folders on every call, so files dropped in show up without a restart.

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi, Tags};

use super::AppState;

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
}

#[derive(Object, Debug)]
pub struct LoraList {
    pub object: String,
    pub data: Vec<LoraObject>,
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
            .map(|e| LoraObject {
                id: e.name,
                object: "lora".into(),
                bytes: e.bytes,
            })
            .collect();
        Json(LoraList {
            object: "list".into(),
            data,
        })
    }
}

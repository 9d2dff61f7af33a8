//! The committed `openapi.json` must equal what the server generates (`kiln openapi`).
//! Regenerate with `UPDATE_OPENAPI=1 cargo test --release --test openapi_spec`.

#[test]
fn committed_openapi_json_is_up_to_date() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    let generated = kiln::server::spec_json();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).expect("writing openapi.json");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "openapi.json is out of date with the server code; run `UPDATE_OPENAPI=1 cargo test --release --test openapi_spec` (or `kiln openapi -o openapi.json`) and commit it"
    );
}

#[test]
fn spec_lists_every_endpoint() {
    let spec: serde_json::Value =
        serde_json::from_str(&kiln::server::spec_json()).expect("spec is JSON");
    let paths = spec["paths"].as_object().expect("paths");
    for p in [
        "/v1/images/generations",
        "/v1/images/edits",
        "/v1/images/files/{id}",
        "/v1/models",
        "/v1/models/{model}",
        "/v1",
        "/health",
        "/v1/images/jobs/generations",
        "/v1/images/jobs/edits",
        "/v1/images/jobs",
        "/v1/images/jobs/{id}",
    ] {
        assert!(paths.contains_key(p), "missing {p}");
    }
    // Jobs: 202 with `Location`, GET and cancel of one job, full schemas.
    let submit = &paths["/v1/images/jobs/generations"]["post"]["responses"]["202"];
    let headers = submit["headers"].as_object().expect("headers");
    assert!(
        headers.keys().any(|h| h.eq_ignore_ascii_case("location")),
        "{submit}"
    );
    assert!(paths["/v1/images/jobs/{id}/cancel"].get("post").is_some());
    let schemas = &spec["components"]["schemas"];
    let job_body = &schemas["CreateImageJobRequest"]["properties"];
    for f in ["prompt", "size", "seed", "response_format", "webhook_url"] {
        assert!(job_body.get(f).is_some(), "CreateImageJobRequest lacks {f}");
    }
    let edit_form = &paths["/v1/images/jobs/edits"]["post"]["requestBody"]["content"]["multipart/form-data"]
        ["schema"]["properties"];
    for f in ["image", "mask", "prompt", "webhook_url"] {
        assert!(edit_form.get(f).is_some(), "the edit job form lacks {f}");
    }
    // `image` is required in both edit forms (one part or repeated: OpenAI's anyOf).
    for path in ["/v1/images/edits", "/v1/images/jobs/edits"] {
        let form = &paths[path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"];
        let required: Vec<&str> = form["required"]
            .as_array()
            .expect("required")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert!(required.contains(&"image"), "{path}: {required:?}");
        assert_eq!(
            form["properties"]["image"]["anyOf"]
                .as_array()
                .map(Vec::len),
            Some(2)
        );
    }
    // `scheduler`: every name of the scheduler table, and nothing else.
    let table: Vec<&str> = kiln::schedulers::REGISTRY
        .iter()
        .flat_map(|(_, names)| names.iter().copied())
        .collect();
    let listed: Vec<&str> = schemas["SchedulerName"]["enum"]
        .as_array()
        .expect("SchedulerName enum")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(listed, table);
    for n in ["pndm", "EulerAncestralDiscreteScheduler", "DPM++ 2M Karras"] {
        assert!(listed.contains(&n), "{n}");
    }
    for f in [
        "id",
        "status",
        "queue_position",
        "step",
        "total_steps",
        "created_at",
        "started_at",
        "finished_at",
        "expires_at",
        "error",
        "data",
        "replica",
    ] {
        assert!(
            schemas["ImageJob"]["properties"].get(f).is_some(),
            "ImageJob lacks {f}"
        );
    }
    let gen_body = &spec["components"]["schemas"]["CreateImageRequest"]["properties"];
    for f in [
        "prompt",
        "n",
        "size",
        "response_format",
        "output_format",
        "seed",
        "negative_prompt",
        "guidance_scale",
        "num_inference_steps",
        "stream",
        "partial_images",
    ] {
        assert!(gen_body.get(f).is_some(), "CreateImageRequest lacks {f}");
    }
}

#!/usr/bin/env python3
"""openai 0.28.1 against a running `kiln serve` (tiny demo model), called the way the Prem
registry documented it. Usage: test_openai_v0.py BASE_URL API_KEY"""

import io
import sys

import openai

from common import Failures, check_b64_images, png_bytes

assert openai.__version__.startswith("0."), openai.__version__
base, key = sys.argv[1], sys.argv[2]
openai.api_base = base
openai.api_key = key
f = Failures()


def prem_documented_call():
    # Exactly the Prem README call: no model, no response_format.
    r = openai.Image.create(prompt="a lighthouse at dusk", n=1, size="512x512", num_inference_steps=2)
    check_b64_images(r["data"], 1, (512, 512))


def extensions_as_keywords():
    r = openai.Image.create(prompt="a fox", n=2, size="64x64", response_format="b64_json", guidance_scale=9,
                            num_inference_steps=2, seed=42, negative_prompt="blurry")
    check_b64_images(r["data"], 2, (64, 64))
    assert [d["seed"] for d in r["data"]] == [42, 43], r["data"]


def create_edit():
    # SD inpainting with an OpenAI-convention mask (transparent = edit), numbers as form fields.
    r = openai.Image.create_edit(image=io.BytesIO(png_bytes(64, 64)), mask=io.BytesIO(png_bytes(64, 64, True)),
                                 prompt="make it blue", n=1, size="64x64", guidance_scale=9,
                                 num_inference_steps=2, response_format="b64_json")
    check_b64_images(r["data"], 1, (64, 64))


def create_variation():
    r = openai.Image.create_variation(image=io.BytesIO(png_bytes(64, 64)), n=1, size="64x64",
                                      num_inference_steps=2)
    check_b64_images(r["data"], 1, (64, 64))
    assert r["usage"]["input_tokens_details"]["image_tokens"] == 64, r["usage"]


def model_list():
    models = openai.Model.list()["data"]
    ids = [m["id"] for m in models]
    assert "sd15-demo" in ids, ids
    assert all(m["object"] == "model" for m in models)


def errors():
    for kwargs, param in [({"n": 0}, "n"), ({"response_format": "bogus"}, "response_format"), ({"size": "100x100"}, "size")]:
        try:
            openai.Image.create(prompt="x", **kwargs)
        except openai.error.InvalidRequestError as e:
            assert e.http_status == 400 and e.json_body["error"]["param"] == param, (e.http_status, e.json_body)
        else:
            raise AssertionError("%s was accepted" % kwargs)
    try:
        openai.Image.create(prompt="x", model="no-such-model")
    except openai.error.InvalidRequestError as e:
        assert e.http_status == 404, e.http_status
    else:
        raise AssertionError("unknown model accepted")
    try:
        openai.Image.create(prompt="x", api_key="wrong-key")
    except openai.error.AuthenticationError as e:
        assert e.http_status == 401
    else:
        raise AssertionError("wrong API key accepted")


f.run("Image.create as documented by Prem (512x512)", prem_documented_call)
f.run("Image.create with extension keywords", extensions_as_keywords)
f.run("Image.create_edit", create_edit)
f.run("Image.create_variation", create_variation)
f.run("Model.list", model_list)
f.run("errors are InvalidRequestError/AuthenticationError", errors)
f.exit()

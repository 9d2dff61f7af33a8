//! Which LoRAs a request asks for, and where they are: the LoRA library (`models/loras/`,
//! `--lora-dir`), the `loras` request field / `--lora` flag, and A1111's `<lora:name:weight>`
//! prompt tags. Everything here is about names and files; applying a LoRA is the model's job
//! (`models::sd15::lora`).

use std::path::{Path, PathBuf};

use super::EngineError;

/// A LoRA as a request names it: a library name (a path too, from the CLI) and its weight.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraRef {
    pub name: String,
    pub weight: f32,
}

/// A LoRA resolved to its file.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedLora {
    /// As the request named it (library name, or the path given to the CLI).
    pub name: String,
    pub path: PathBuf,
    pub weight: f32,
}

/// One LoRA the library offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoraEntry {
    pub name: String,
    pub path: PathBuf,
    pub bytes: u64,
}

/// Weights beyond this are typos (A1111 users write 0.2–1.5; negative weights are legitimate).
pub const MAX_LORA_WEIGHT: f32 = 10.0;
/// LoRAs one request may stack (each one is a full pass over the weights it touches).
pub const MAX_LORAS: usize = 8;

/// The LoRA folder. A LoRA is a `NAME.safetensors` file in it, or a `NAME/` folder holding one
/// `.safetensors` (the layout of a Hub LoRA repository, and of `kiln download lcm-lora-sdv1-5`).
/// The folder is read on every lookup, so files dropped in are found without a restart.
#[derive(Debug, Clone, Default)]
pub struct LoraLibrary {
    dir: Option<PathBuf>,
}

fn is_safetensors(p: &Path) -> bool {
    p.is_file()
        && p.extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
}

fn size_of(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// The one `.safetensors` of a LoRA folder (`None` when there are none or several).
fn folder_file(dir: &Path) -> Option<PathBuf> {
    let mut files = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| is_safetensors(p));
    let one = files.next()?;
    files.next().is_none().then_some(one)
}

impl LoraLibrary {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: Some(dir.into()),
        }
    }

    /// A library with no folder (requests may still name files where `paths` allows it).
    pub fn none() -> Self {
        Self { dir: None }
    }

    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Every LoRA in the folder, sorted by name; a missing folder is empty.
    pub fn list(&self) -> Vec<LoraEntry> {
        let Some(entries) = self.dir.as_ref().and_then(|d| std::fs::read_dir(d).ok()) else {
            return Vec::new();
        };
        let mut out: Vec<LoraEntry> = entries
            .flatten()
            .filter_map(|e| {
                let p = e.path();
                let stem = p.file_stem()?.to_str()?.to_string();
                if stem.starts_with('.') {
                    return None;
                }
                let file = if p.is_dir() {
                    folder_file(&p)?
                } else if is_safetensors(&p) {
                    p
                } else {
                    return None;
                };
                let name = if e.path().is_dir() {
                    e.file_name().to_str()?.to_string()
                } else {
                    stem
                };
                Some(LoraEntry {
                    name,
                    bytes: size_of(&file),
                    path: file,
                })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out.dedup_by(|a, b| a.name == b.name);
        out
    }

    /// The file of `name`: a library name, or (with `paths`, i.e. from the CLI) a path to a
    /// `.safetensors` file. An unknown name is an error that lists what exists.
    pub fn resolve(&self, name: &str, paths: bool) -> Result<PathBuf, EngineError> {
        let entries = self.list();
        if let Some(e) = entries.iter().find(|e| e.name == name) {
            return Ok(e.path.clone());
        }
        if paths {
            let p = Path::new(name);
            if is_safetensors(p) {
                return Ok(p.to_path_buf());
            }
            if p.is_dir()
                && let Some(f) = folder_file(p)
            {
                return Ok(f);
            }
        }
        let known = if entries.is_empty() {
            match &self.dir {
                Some(d) => format!("the LoRA folder {} holds none", d.display()),
                None => "no LoRA folder is configured".to_string(),
            }
        } else {
            let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
            format!("available: {}", names.join(", "))
        };
        Err(invalid(format!("unknown LoRA `{name}`; {known}")))
    }

    /// Resolves every requested LoRA, checking weights and the count. The same LoRA named
    /// twice is refused (add the weights instead), so no request silently stacks one twice.
    pub fn resolve_all(
        &self,
        wanted: &[LoraRef],
        paths: bool,
    ) -> Result<Vec<ResolvedLora>, EngineError> {
        if wanted.len() > MAX_LORAS {
            return Err(invalid(format!(
                "at most {MAX_LORAS} LoRAs per request, got {}",
                wanted.len()
            )));
        }
        let mut out: Vec<ResolvedLora> = Vec::with_capacity(wanted.len());
        for w in wanted {
            if !w.weight.is_finite() || w.weight.abs() > MAX_LORA_WEIGHT {
                return Err(invalid(format!(
                    "LoRA `{}`: the weight must be between -{MAX_LORA_WEIGHT} and \
                     {MAX_LORA_WEIGHT}, got {}",
                    w.name, w.weight
                )));
            }
            let path = self.resolve(&w.name, paths)?;
            if out.iter().any(|o| o.path == path) {
                return Err(invalid(format!(
                    "LoRA `{}` is named twice; give it once with the summed weight",
                    w.name
                )));
            }
            out.push(ResolvedLora {
                name: w.name.clone(),
                path,
                weight: w.weight,
            });
        }
        Ok(out)
    }
}

fn invalid(message: String) -> EngineError {
    EngineError::Invalid {
        param: Some("loras".into()),
        message,
    }
}

/// `NAME[:WEIGHT]` as `--lora` takes it (weight 1 when absent). The weight is what follows the
/// last `:` when it reads as a number, so a path with a colon in it still works.
pub fn parse_lora_arg(s: &str) -> Result<LoraRef, EngineError> {
    let (name, weight) = match s.rsplit_once(':') {
        Some((n, w)) if w.trim().parse::<f32>().is_ok() => (n, w.trim().parse().unwrap_or(1.0)),
        _ => (s, 1.0),
    };
    let name = name.trim();
    if name.is_empty() {
        return Err(invalid(format!("`{s}`: expected NAME or NAME:WEIGHT")));
    }
    Ok(LoraRef {
        name: name.to_string(),
        weight,
    })
}

/// A1111's extra-network tags that kiln does not have: refused rather than left in the text.
const UNSUPPORTED_TAGS: [&str; 1] = ["hypernet"];

/// Takes A1111's `<lora:NAME>` / `<lora:NAME:WEIGHT>` tags (also `<lyco:…>`, which A1111 reads
/// as LoRAs) out of `prompt`: the text without them, and the LoRAs in order. As A1111 does,
/// the tags' places leave no trace in the text (surrounding spaces are kept; CLIP's tokenizer
/// collapses them). Separate text-encoder/UNet weights (`<lora:x:0.5:0.8>`) and hypernetworks
/// are refused, not ignored.
pub fn take_lora_tags(prompt: &str) -> Result<(String, Vec<LoraRef>), EngineError> {
    let mut text = String::with_capacity(prompt.len());
    let mut loras = Vec::new();
    let mut rest = prompt;
    while let Some(open) = rest.find('<') {
        let after = &rest[open + 1..];
        let tag = after
            .find('>')
            .map(|close| &after[..close])
            .and_then(|body| {
                let (kind, args) = body.split_once(':')?;
                let word =
                    !kind.is_empty() && kind.chars().all(|c| c.is_alphanumeric() || c == '_');
                word.then_some((kind, args, body.len()))
            });
        let Some((kind, args, len)) = tag else {
            text.push_str(&rest[..=open]);
            rest = after;
            continue;
        };
        text.push_str(&rest[..open]);
        rest = &after[len + 1..];
        match kind.to_ascii_lowercase().as_str() {
            "lora" | "lyco" => loras.push(lora_tag(kind, args)?),
            k if UNSUPPORTED_TAGS.contains(&k) => {
                return Err(EngineError::Unsupported {
                    param: Some("prompt".into()),
                    message: format!(
                        "`<{kind}:{args}>`: kiln has no {kind} support; remove the tag"
                    ),
                });
            }
            _ => {
                // Not an extra-network tag: text, as written.
                text.push('<');
                text.push_str(kind);
                text.push(':');
                text.push_str(args);
                text.push('>');
            }
        }
    }
    text.push_str(rest);
    Ok((text, loras))
}

fn lora_tag(kind: &str, args: &str) -> Result<LoraRef, EngineError> {
    let parts: Vec<&str> = args.split(':').map(str::trim).collect();
    let bad = |why: &str| EngineError::Invalid {
        param: Some("prompt".into()),
        message: format!("`<{kind}:{args}>`: {why}"),
    };
    let weight = match parts.as_slice() {
        [name] if !name.is_empty() => 1.0,
        [name, w] if !name.is_empty() => w
            .parse::<f32>()
            .map_err(|_| bad("the weight must be a number, as in <lora:NAME:0.8>"))?,
        [_, _, _, ..] => {
            return Err(bad(
                "separate text-encoder and UNet weights are not supported; give one weight",
            ));
        }
        _ => return Err(bad("expected <lora:NAME> or <lora:NAME:WEIGHT>")),
    };
    Ok(LoraRef {
        name: parts[0].to_string(),
        weight,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str, weight: f32) -> LoraRef {
        LoraRef {
            name: name.into(),
            weight,
        }
    }

    #[test]
    fn tags_come_out_of_the_prompt() {
        let (t, l) = take_lora_tags("a cat <lora:film:0.7>, <lora:detail> <b:x> a<b").unwrap();
        assert_eq!(t, "a cat ,  <b:x> a<b");
        assert_eq!(l, vec![r("film", 0.7), r("detail", 1.0)]);
        let (t, l) = take_lora_tags("<LyCo:x:-0.5>dog").unwrap();
        assert_eq!((t.as_str(), l), ("dog", vec![r("x", -0.5)]));
        assert!(take_lora_tags("<lora:x:0.5:0.8>").is_err());
        assert!(take_lora_tags("<lora:x:lots>").is_err());
        assert!(take_lora_tags("<lora::1>").is_err());
        assert!(take_lora_tags("<hypernet:h:1>").is_err());
        let (t, l) = take_lora_tags("plain (text) <unclosed").unwrap();
        assert_eq!((t.as_str(), l.len()), ("plain (text) <unclosed", 0));
    }

    #[test]
    fn lora_args() {
        assert_eq!(parse_lora_arg("film:0.5").unwrap(), r("film", 0.5));
        assert_eq!(parse_lora_arg("film").unwrap(), r("film", 1.0));
        assert_eq!(
            parse_lora_arg("/a:b/x.safetensors").unwrap(),
            r("/a:b/x.safetensors", 1.0)
        );
        assert!(parse_lora_arg(":2").is_err());
    }

    #[test]
    fn the_library_finds_files_and_folders_and_names_what_exists() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("film.safetensors"), b"x").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        let sub = dir.path().join("lcm");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("pytorch_lora_weights.safetensors"), b"xy").unwrap();
        let lib = LoraLibrary::new(dir.path());
        let names: Vec<String> = lib.list().into_iter().map(|e| e.name).collect();
        assert_eq!(names, ["film", "lcm"]);
        assert!(
            lib.resolve("lcm", false)
                .unwrap()
                .ends_with("pytorch_lora_weights.safetensors")
        );
        let e = lib.resolve("nope", false).unwrap_err().to_string();
        assert!(e.contains("`nope`") && e.contains("film, lcm"), "{e}");
        let path = dir.path().join("film.safetensors");
        let p = path.to_str().unwrap();
        assert!(
            LoraLibrary::none().resolve(p, false).is_err(),
            "no paths from requests"
        );
        assert_eq!(LoraLibrary::none().resolve(p, true).unwrap(), path);
        let twice = lib.resolve_all(&[r("film", 1.0), r("film", 0.5)], false);
        assert!(twice.unwrap_err().to_string().contains("twice"));
        assert!(lib.resolve_all(&[r("film", f32::NAN)], false).is_err());
    }
}

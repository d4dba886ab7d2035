//! OCI images on disk: an OCI image layout (a directory with `index.json` and `blobs/`), or an
//! archive of one (`docker save`, `skopeo copy ... oci-archive:`), whose layers are applied in
//! order ([`super::layer`]) and whose configuration (`Env`, `WorkingDir`, `User`) the zone's
//! commands run with. No registry is contacted.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

use super::layer::{self, Budget, LayerError};

/// Largest JSON document (index, manifest, configuration) read.
const MAX_JSON: u64 = 4 << 20;

/// Why an OCI image could not be read.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// Neither `index.json` nor `manifest.json`.
    #[error(
        "neither index.json nor manifest.json: not an OCI image layout or a `docker save` archive"
    )]
    NotAnImage,
    /// A file of the image could not be read.
    #[error("{what}: {source}")]
    Read {
        /// Which file.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A JSON document is malformed.
    #[error("{what}: {reason}")]
    Json {
        /// Which document.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No manifest for linux/amd64.
    #[error("the image has no manifest for linux/amd64")]
    NoPlatform,
    /// A blob's contents do not match its digest.
    #[error("blob {digest} does not match its digest: the image is corrupt")]
    Digest {
        /// The digest named.
        digest: String,
    },
    /// A layer could not be applied.
    #[error("layer {index} ({name}): {source}")]
    Layer {
        /// 0-based layer number.
        index: usize,
        /// Its file in the image.
        name: String,
        /// Why.
        #[source]
        source: LayerError,
    },
}

/// What the zone's commands run with, from the image's configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    /// Working directory (empty: `/`).
    pub working_dir: String,
    /// `user`, `uid`, `user:group` or `uid:gid` (empty: root).
    pub user: String,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Deserialize)]
struct Manifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct DockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

#[derive(Deserialize, Default)]
struct ConfigFile {
    #[serde(default)]
    config: Option<RunConfig>,
}

#[derive(Deserialize, Default)]
struct RunConfig {
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    working_dir: Option<String>,
    #[serde(rename = "User", default)]
    user: Option<String>,
}

/// An image read from a layout directory: its layers (files, in order) and configuration.
pub(crate) struct Image {
    /// The layer files, lowest first.
    pub(crate) layers: Vec<PathBuf>,
    /// The run configuration.
    pub(crate) config: ImageConfig,
    /// A key naming this exact image: SHA-256 over its manifest and configuration.
    pub(crate) key: String,
}

/// Reads the image in the layout directory `dir` (an OCI layout, or an unpacked `docker save`).
pub(crate) fn read(dir: &Path) -> Result<Image, OciError> {
    let (layers, config_bytes, manifest_bytes) = if dir.join("index.json").is_file() {
        let index: Index = json(&dir.join("index.json"), "index.json")?;
        let descriptor = pick(index.manifests)?;
        let mut bytes = blob(dir, &descriptor.digest)?;
        let mut manifest: serde_json::Value = parse(&bytes, "manifest")?;
        // A nested index (multi-platform images): one more level.
        if manifest.get("manifests").is_some() {
            let nested: Index = parse(&bytes, "nested index")?;
            bytes = blob(dir, &pick(nested.manifests)?.digest)?;
            manifest = parse(&bytes, "manifest")?;
        }
        let manifest: Manifest = serde_json::from_value(manifest).map_err(|e| OciError::Json {
            what: "manifest".into(),
            reason: e.to_string(),
        })?;
        let layers = manifest
            .layers
            .iter()
            .map(|l| blob_path(dir, &l.digest))
            .collect::<Result<Vec<_>, _>>()?;
        (layers, blob(dir, &manifest.config.digest)?, bytes)
    } else if dir.join("manifest.json").is_file() {
        let bytes = read_bounded(&dir.join("manifest.json"), "manifest.json")?;
        let entries: Vec<DockerEntry> = parse(&bytes, "manifest.json")?;
        let entry = entries.into_iter().next().ok_or(OciError::NotAnImage)?;
        let inside = |p: &str| {
            layer::relative(Path::new(p))
                .map(|rel| dir.join(rel))
                .ok_or_else(|| OciError::Json {
                    what: "manifest.json".into(),
                    reason: format!("path {p:?} leaves the archive"),
                })
        };
        let layers = entry
            .layers
            .iter()
            .map(|l| inside(l))
            .collect::<Result<Vec<_>, _>>()?;
        let config = read_bounded(&inside(&entry.config)?, "the image configuration")?;
        (layers, config, bytes)
    } else {
        return Err(OciError::NotAnImage);
    };
    let file: ConfigFile = parse(&config_bytes, "the image configuration")?;
    let run = file.config.unwrap_or_default();
    let mut hash = Sha256::new();
    hash.update(b"zones-oci-v1\0");
    hash.update(&manifest_bytes);
    hash.update([0]);
    hash.update(&config_bytes);
    let key = hash
        .finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Image {
        layers,
        config: ImageConfig {
            env: run.env.unwrap_or_default(),
            working_dir: run.working_dir.unwrap_or_default(),
            user: run.user.unwrap_or_default(),
        },
        key,
    })
}

/// Applies the image's layers, in order, to the tree at `root`.
pub(crate) fn unpack(image: &Image, root: &Path, budget: &mut Budget) -> Result<(), OciError> {
    for (index, path) in image.layers.iter().enumerate() {
        let name = path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let layer_err = |source| OciError::Layer {
            index,
            name: name.clone(),
            source,
        };
        let file = std::fs::File::open(path).map_err(|source| OciError::Read {
            what: format!("layer {index} ({})", path.display()),
            source,
        })?;
        let mut file = std::io::BufReader::new(file);
        let magic = {
            let buf =
                std::io::BufRead::fill_buf(&mut file).map_err(|e| layer_err(LayerError::Tar(e)))?;
            buf.get(..4).map(<[u8]>::to_vec).unwrap_or_default()
        };
        let result = if magic.starts_with(&[0x1f, 0x8b]) {
            layer::apply(root, flate2::read::GzDecoder::new(file), budget)
        } else if magic == [0x28, 0xb5, 0x2f, 0xfd] {
            let decoder = ruzstd::decoding::StreamingDecoder::new(file)
                .map_err(|e| layer_err(LayerError::Tar(std::io::Error::other(e.to_string()))))?;
            layer::apply(root, decoder, budget)
        } else {
            layer::apply(root, file, budget)
        };
        result.map_err(layer_err)?;
    }
    Ok(())
}

/// Unpacks the archive `archive` (a tar file: `docker save` or an OCI archive) into `dir`, bounded
/// by `budget`. The archive's own entries are plain files and directories.
pub(crate) fn unpack_archive(
    archive: &Path,
    dir: &Path,
    budget: &mut Budget,
) -> Result<(), OciError> {
    let file = std::fs::File::open(archive).map_err(|source| OciError::Read {
        what: archive.display().to_string(),
        source,
    })?;
    layer::apply(dir, std::io::BufReader::new(file), budget).map_err(|source| OciError::Layer {
        index: 0,
        name: "the archive itself".into(),
        source,
    })
}

/// The manifest to use: the one for linux/amd64, or the only one without a platform.
fn pick(manifests: Vec<Descriptor>) -> Result<Descriptor, OciError> {
    let count = manifests.len();
    let mut fallback = None;
    for m in manifests {
        match &m.platform {
            Some(p) if p.os == "linux" && p.architecture == "amd64" => return Ok(m),
            None if count == 1 || fallback.is_none() && !m.media_type.contains("attestation") => {
                fallback = Some(m);
            }
            _ => {}
        }
    }
    fallback.ok_or(OciError::NoPlatform)
}

/// The file of blob `digest` (`<algorithm>:<hex>`), refusing digests that are not plain names.
fn blob_path(dir: &Path, digest: &str) -> Result<PathBuf, OciError> {
    let bad = || OciError::Json {
        what: "a descriptor".into(),
        reason: format!("digest {digest:?} is not `<algorithm>:<hex>`"),
    };
    let (alg, hex) = digest.split_once(':').ok_or_else(bad)?;
    let plain = |s: &str, ok: fn(u8) -> bool| !s.is_empty() && s.bytes().all(ok);
    if !plain(alg, |b| b.is_ascii_lowercase() || b.is_ascii_digit())
        || !plain(hex, |b| b.is_ascii_hexdigit())
    {
        return Err(bad());
    }
    Ok(dir.join("blobs").join(alg).join(hex))
}

/// A small blob's bytes, checked against its digest when it is SHA-256.
fn blob(dir: &Path, digest: &str) -> Result<Vec<u8>, OciError> {
    let bytes = read_bounded(&blob_path(dir, digest)?, digest)?;
    if let Some(hex) = digest.strip_prefix("sha256:") {
        let got: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if !got.eq_ignore_ascii_case(hex) {
            return Err(OciError::Digest {
                digest: digest.to_owned(),
            });
        }
    }
    Ok(bytes)
}

fn read_bounded(path: &Path, what: &str) -> Result<Vec<u8>, OciError> {
    let read_err = |source| OciError::Read {
        what: what.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(read_err)?
        .take(MAX_JSON + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_JSON {
        return Err(OciError::Json {
            what: what.to_owned(),
            reason: format!("larger than {MAX_JSON} bytes"),
        });
    }
    Ok(bytes)
}

fn json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T, OciError> {
    parse(&read_bounded(path, what)?, what)
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, OciError> {
    serde_json::from_slice(bytes).map_err(|e| OciError::Json {
        what: what.to_owned(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn sha(bytes: &[u8]) -> String {
        Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn layer(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, path, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// An OCI layout with two layers (the second gzip-compressed, with a whiteout) and a config.
    fn layout(dir: &Path) {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        let put = |bytes: &[u8]| {
            let d = sha(bytes);
            std::fs::write(blobs.join(&d), bytes).unwrap();
            format!("sha256:{d}")
        };
        let l1 = put(&layer(&[("etc/os-release", b"one"), ("bin/old", b"x")]));
        let l2 = put(&gzip(&layer(&[
            ("bin/.wh.old", b""),
            ("app/main.py", b"print(42)"),
        ])));
        let config = put(
            br#"{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/bin:/bin","LANG=C.UTF-8"],"WorkingDir":"/app","User":"1000:1000"}}"#,
        );
        let manifest = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":1}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{l1}","size":1}},{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{l2}","size":1}}]}}"#
        );
        let m = put(manifest.as_bytes());
        std::fs::write(
            dir.join("index.json"),
            format!(
                r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{m}","size":1,"platform":{{"architecture":"arm64","os":"linux"}}}},{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{m}","size":1,"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#
            ),
        )
        .unwrap();
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    }

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("zones-oci-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn budget() -> Budget {
        Budget {
            left: 1 << 20,
            limit: 1 << 20,
        }
    }

    #[test]
    fn a_layout_unpacks_with_its_configuration() {
        let d = temp("layout");
        layout(&d.join("image"));
        let image = read(&d.join("image")).unwrap();
        assert_eq!(image.layers.len(), 2);
        assert_eq!(image.config.env, ["PATH=/usr/bin:/bin", "LANG=C.UTF-8"]);
        assert_eq!(image.config.working_dir, "/app");
        assert_eq!(image.config.user, "1000:1000");
        std::fs::create_dir_all(d.join("root")).unwrap();
        unpack(&image, &d.join("root"), &mut budget()).unwrap();
        assert_eq!(
            std::fs::read(d.join("root/app/main.py")).unwrap(),
            b"print(42)"
        );
        assert_eq!(
            std::fs::read(d.join("root/etc/os-release")).unwrap(),
            b"one"
        );
        assert!(!d.join("root/bin/old").exists(), "whited out");
        assert_eq!(read(&d.join("image")).unwrap().key, image.key, "stable key");

        // The same layout archived (as `docker save` and skopeo's oci-archive are) reads alike.
        let mut tar = tar::Builder::new(Vec::new());
        tar.append_dir_all(".", d.join("image")).unwrap();
        std::fs::write(d.join("image.tar"), tar.into_inner().unwrap()).unwrap();
        std::fs::create_dir_all(d.join("unpacked")).unwrap();
        unpack_archive(&d.join("image.tar"), &d.join("unpacked"), &mut budget()).unwrap();
        assert_eq!(read(&d.join("unpacked")).unwrap().key, image.key);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn docker_save_manifests_are_read() {
        let d = temp("docker");
        std::fs::create_dir_all(d.join("abc")).unwrap();
        std::fs::write(d.join("abc/layer.tar"), layer(&[("hello", b"docker")])).unwrap();
        std::fs::write(d.join("cfg.json"), br#"{"config":{"Env":["A=1"]}}"#).unwrap();
        std::fs::write(
            d.join("manifest.json"),
            br#"[{"Config":"cfg.json","RepoTags":["x:latest"],"Layers":["abc/layer.tar"]}]"#,
        )
        .unwrap();
        let image = read(&d).unwrap();
        assert_eq!(image.config.env, ["A=1"]);
        assert_eq!(image.config.working_dir, "");
        std::fs::create_dir_all(d.join("root")).unwrap();
        unpack(&image, &d.join("root"), &mut budget()).unwrap();
        assert_eq!(std::fs::read(d.join("root/hello")).unwrap(), b"docker");
        // A manifest that points outside the archive is refused.
        std::fs::write(
            d.join("manifest.json"),
            br#"[{"Config":"../../etc/passwd","Layers":[]}]"#,
        )
        .unwrap();
        assert!(matches!(read(&d), Err(OciError::Json { .. })));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn corrupt_images_are_errors_not_panics() {
        let d = temp("corrupt");
        assert!(matches!(read(&d), Err(OciError::NotAnImage)));
        layout(&d);
        // A tampered manifest no longer matches its digest.
        let index = std::fs::read_to_string(d.join("index.json")).unwrap();
        let digest = index.split("sha256:").nth(1).unwrap()[..64].to_owned();
        std::fs::write(d.join("blobs/sha256").join(&digest), b"{}").unwrap();
        assert!(matches!(read(&d), Err(OciError::Digest { .. })));
        for bad in [
            r#"{"manifests":[{"digest":"sha256:../../x"}]}"#,
            r#"{"manifests":[]}"#,
            "not json",
        ] {
            std::fs::write(d.join("index.json"), bad).unwrap();
            assert!(read(&d).is_err(), "{bad}");
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
}

//! Where updates are found: an Omaha server (Flatcar's protocol, so Nebraska can drive a
//! Keel fleet) or a plain channel document with client-side waves.
//!
//! The channel document is JSON: `{"version","payload","size"?,"waves"?:[{"percent","start"}]}`
//! (`payload` relative to the document's URL; `start` Unix seconds). A host's place in the
//! rollout is a number 0–99 derived from its machine id and the version, so each release
//! picks a different first wave; it may update once a wave with `percent` above its number
//! has started. The payload itself is signed, so the document needs no signature.

use serde::Deserialize;

/// Keel's Omaha application id.
pub const KEEL_APP_ID: &str = "{6d1e9c1a-2f3b-4c8e-9a4d-5b7e0f1c2a3d}";
/// Omaha event types and results (update_engine's).
pub const EVENT_UPDATE_COMPLETE: u32 = 3;
pub const EVENT_DOWNLOAD_STARTED: u32 = 13;
pub const EVENT_DOWNLOAD_FINISHED: u32 = 14;
pub const RESULT_ERROR: u32 = 0;
pub const RESULT_SUCCESS: u32 = 1;
pub const RESULT_SUCCESS_REBOOT: u32 = 2;
/// update_engine's error code for "the new version did not boot".
pub const ERROR_ROLLBACK: u32 = 44;
/// Generic error.
pub const ERROR_GENERIC: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{url}: request failed")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: not a channel document")]
    Channel {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{url}: Omaha response is not XML")]
    Xml {
        url: String,
        #[source]
        source: roxmltree::Error,
    },
    #[error("{url}: Omaha response: {why}")]
    Omaha { url: String, why: String },
}

/// An update the source offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub version: String,
    pub payload_url: String,
    pub size: Option<u64>,
}

/// Who is asking.
#[derive(Debug, Clone, Default)]
pub struct Client {
    pub machine_id: String,
    pub boot_id: String,
    pub version: String,
    pub group: String,
    pub board: String,
    pub arch: String,
    pub app_id: String,
}

#[derive(Debug, Clone)]
pub enum UpdateSource {
    Channel { url: String },
    Omaha { url: String },
}

#[derive(Debug, Deserialize)]
struct ChannelDoc {
    version: String,
    payload: String,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    waves: Vec<Wave>,
}

/// A wave of a rollout.
#[derive(Debug, Clone, Deserialize)]
pub struct Wave {
    pub percent: u8,
    pub start: i64,
}

/// This host's place (0–99) in the rollout of `version`.
pub fn rollout_position(machine_id: &str, version: &str) -> u8 {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(format!("{machine_id}:{version}").as_bytes());
    (u64::from_be_bytes(h[..8].try_into().expect("8 bytes")) % 100) as u8
}

/// Whether a host at `position` may take the release at `now`.
pub fn wave_open(waves: &[Wave], position: u8, now: i64) -> bool {
    waves.is_empty() || waves.iter().any(|w| position < w.percent && now >= w.start)
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// An Omaha event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: u32,
    pub result: u32,
    pub error_code: Option<u32>,
    pub previous_version: Option<String>,
}

impl Event {
    pub fn new(
        kind: u32,
        result: u32,
        error_code: Option<u32>,
        previous_version: Option<String>,
    ) -> Event {
        Event {
            kind,
            result,
            error_code,
            previous_version,
        }
    }
}

/// The request XML, as update_engine builds it.
pub fn omaha_request(c: &Client, update_check: bool, event: Option<&Event>) -> String {
    let v = env!("CARGO_PKG_VERSION");
    let mut app_body = String::new();
    if update_check {
        app_body.push_str("    <ping active=\"1\"></ping>\n    <updatecheck></updatecheck>\n");
    }
    if let Some(e) = event {
        app_body.push_str(&format!(
            "    <event eventtype=\"{}\" eventresult=\"{}\"",
            e.kind, e.result
        ));
        if let Some(code) = e.error_code {
            app_body.push_str(&format!(" errorcode=\"{code}\""));
        }
        if let Some(prev) = &e.previous_version {
            app_body.push_str(&format!(" previousversion=\"{}\"", xml_escape(prev)));
        }
        app_body.push_str("></event>\n");
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<request protocol=\"3.0\" version=\"keel-updater-{v}\" updaterversion=\"keel-updater-{v}\" installsource=\"scheduler\" ismachine=\"1\">\n    <os version=\"Keel\" platform=\"Keel\" sp=\"{ver}_{arch}\"></os>\n    <app appid=\"{app}\" version=\"{ver}\" track=\"{group}\" bootid=\"{{{boot}}}\" oem=\"\" machineid=\"{mid}\" lang=\"en-US\" board=\"{board}\" hardware_class=\"\" delta_okay=\"false\" >\n{app_body}    </app>\n</request>\n",
        ver = xml_escape(&c.version),
        arch = xml_escape(&c.arch),
        app = xml_escape(&c.app_id),
        group = xml_escape(&c.group),
        boot = xml_escape(&c.boot_id),
        mid = xml_escape(&c.machine_id),
        board = xml_escape(&c.board),
    )
}

fn find<'a, 'i>(node: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    node.descendants().find(|n| n.has_tag_name(name))
}

/// Parses an update-check response: `None` for `noupdate`.
pub fn parse_omaha_response(url: &str, xml: &str) -> Result<Option<Offer>, SourceError> {
    let doc = roxmltree::Document::parse(xml).map_err(|source| SourceError::Xml {
        url: url.to_string(),
        source,
    })?;
    let bad = |why: &str| SourceError::Omaha {
        url: url.to_string(),
        why: why.to_string(),
    };
    let root = doc.root_element();
    let app = find(root, "app").ok_or_else(|| bad("no <app>"))?;
    let check = find(app, "updatecheck").ok_or_else(|| bad("no <updatecheck>"))?;
    match check.attribute("status") {
        Some("noupdate") => return Ok(None),
        Some("ok") => {}
        other => return Err(bad(&format!("updatecheck status {other:?}"))),
    }
    let codebase = check
        .descendants()
        .filter(|n| n.has_tag_name("url"))
        .find_map(|n| n.attribute("codebase").filter(|c| !c.is_empty()))
        .ok_or_else(|| bad("no url codebase"))?;
    let version = find(check, "manifest")
        .and_then(|m| m.attribute("version"))
        .ok_or_else(|| bad("no manifest version"))?;
    let package = find(check, "package").ok_or_else(|| bad("no package"))?;
    let name = package
        .attribute("name")
        .ok_or_else(|| bad("package without name"))?;
    let size: u64 = package
        .attribute("size")
        .and_then(|s| s.parse().ok())
        .filter(|s| *s > 0)
        .ok_or_else(|| bad("package size missing or 0"))?;
    check
        .descendants()
        .find(|n| n.has_tag_name("action") && n.attribute("event") == Some("postinstall"))
        .ok_or_else(|| bad("no postinstall action"))?;
    let base = if codebase.ends_with('/') {
        codebase.to_string()
    } else {
        format!("{codebase}/")
    };
    Ok(Some(Offer {
        version: version.to_string(),
        payload_url: format!("{base}{name}"),
        size: Some(size),
    }))
}

impl UpdateSource {
    /// Asks for an update.
    pub async fn check(
        &self,
        http: &reqwest::Client,
        c: &Client,
        now: i64,
    ) -> Result<Option<Offer>, SourceError> {
        match self {
            UpdateSource::Channel { url } => {
                let text = get_text(http, http.get(url), url).await?;
                let doc: ChannelDoc =
                    serde_json::from_str(&text).map_err(|source| SourceError::Channel {
                        url: url.clone(),
                        source,
                    })?;
                if !wave_open(
                    &doc.waves,
                    rollout_position(&c.machine_id, &doc.version),
                    now,
                ) {
                    tracing::info!(version = %doc.version, "update not yet open for this host's wave");
                    return Ok(None);
                }
                let payload_url = reqwest::Url::parse(url)
                    .and_then(|base| base.join(&doc.payload))
                    .map(|u| u.to_string())
                    .unwrap_or(doc.payload);
                Ok(Some(Offer {
                    version: doc.version,
                    payload_url,
                    size: doc.size,
                }))
            }
            UpdateSource::Omaha { url } => {
                let body = omaha_request(c, true, None);
                let text = get_text(
                    http,
                    http.post(url).header("Content-Type", "text/xml").body(body),
                    url,
                )
                .await?;
                parse_omaha_response(url, &text)
            }
        }
    }

    /// Reports an event (Omaha only; best effort).
    pub async fn report(
        &self,
        http: &reqwest::Client,
        c: &Client,
        event: &Event,
    ) -> Result<(), SourceError> {
        if let UpdateSource::Omaha { url } = self {
            let body = omaha_request(c, false, Some(event));
            get_text(
                http,
                http.post(url).header("Content-Type", "text/xml").body(body),
                url,
            )
            .await?;
        }
        Ok(())
    }
}

async fn get_text(
    _http: &reqwest::Client,
    req: reqwest::RequestBuilder,
    url: &str,
) -> Result<String, SourceError> {
    let resp = req.send().await.map_err(|source| SourceError::Http {
        url: url.to_string(),
        source,
    })?;
    if !resp.status().is_success() {
        return Err(SourceError::Status {
            url: url.to_string(),
            status: resp.status().as_u16(),
        });
    }
    resp.text().await.map_err(|source| SourceError::Http {
        url: url.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flatcar_update_style_response() {
        let xml = r#"<response protocol="3.0" server="flatcar-update"><daystart elapsed_seconds="0"></daystart>
<app appid="{e96281a6-d1af-4bde-9a0a-97b76e56dc57}" status="ok"><ping status="ok"></ping>
<updatecheck status="ok"><urls><url codebase="http://localhost:9091/"></url></urls>
<manifest version="3815.2.1">
<packages>
<package name="flatcar_production_update.gz" hash="x" size="458234665" required="true"></package>
</packages>
<actions><action event="postinstall" sha256="abc=" DisablePayloadBackoff="true"></action></actions></manifest>
</updatecheck><event status="ok"></event></app></response>"#;
        assert_eq!(
            parse_omaha_response("u", xml).unwrap(),
            Some(Offer {
                version: "3815.2.1".into(),
                payload_url: "http://localhost:9091/flatcar_production_update.gz".into(),
                size: Some(458234665),
            })
        );
        let none = r#"<response protocol="3.0"><app status="ok"><updatecheck status="noupdate"/></app></response>"#;
        assert_eq!(parse_omaha_response("u", none).unwrap(), None);
        let err = r#"<response protocol="3.0"><app status="ok"><updatecheck status="error-unknownApplication"/></app></response>"#;
        assert!(
            parse_omaha_response("u", err)
                .unwrap_err()
                .to_string()
                .contains("error-unknownApplication")
        );
        assert!(parse_omaha_response("u", "<oops").is_err());
    }

    #[test]
    fn request_carries_identity_and_events() {
        let c = Client {
            machine_id: "m1".into(),
            boot_id: "b1".into(),
            version: "1.0.0".into(),
            group: "stable".into(),
            board: "amd64-usr".into(),
            arch: "x86_64".into(),
            app_id: KEEL_APP_ID.into(),
        };
        let xml = omaha_request(
            &c,
            true,
            Some(&Event {
                kind: EVENT_UPDATE_COMPLETE,
                result: RESULT_SUCCESS_REBOOT,
                error_code: None,
                previous_version: Some("0.9.0".into()),
            }),
        );
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let app = doc.descendants().find(|n| n.has_tag_name("app")).unwrap();
        assert_eq!(app.attribute("track"), Some("stable"));
        assert_eq!(app.attribute("machineid"), Some("m1"));
        assert_eq!(app.attribute("version"), Some("1.0.0"));
        assert_eq!(app.attribute("bootid"), Some("{b1}"));
        let ev = doc.descendants().find(|n| n.has_tag_name("event")).unwrap();
        assert_eq!(
            (
                ev.attribute("eventtype"),
                ev.attribute("eventresult"),
                ev.attribute("previousversion")
            ),
            (Some("3"), Some("2"), Some("0.9.0"))
        );
        assert!(doc.descendants().any(|n| n.has_tag_name("updatecheck")));
    }

    #[test]
    fn waves_open_in_order() {
        let waves = vec![
            Wave {
                percent: 10,
                start: 100,
            },
            Wave {
                percent: 100,
                start: 200,
            },
        ];
        assert!(!wave_open(&waves, 5, 50));
        assert!(wave_open(&waves, 5, 100));
        assert!(!wave_open(&waves, 50, 150));
        assert!(wave_open(&waves, 50, 200));
        assert!(wave_open(&[], 99, 0));
        // Positions spread over 0..100.
        let positions: std::collections::BTreeSet<u8> = (0..500)
            .map(|i| rollout_position(&format!("m{i}"), "1.2.0"))
            .collect();
        assert!(positions.len() > 90);
    }
}

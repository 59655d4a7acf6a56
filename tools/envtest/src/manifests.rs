//! Manifests: multi-document YAML parsing, server-side apply of any kind through discovery, and
//! CRD installation that waits until the new kinds are served.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams},
    core::{GroupVersionKind, discovery::Scope},
    discovery,
    runtime::wait::{await_condition, conditions},
};

use crate::{ControlPlane, Error, FIELD_MANAGER};

const CRD_TIMEOUT: Duration = Duration::from_secs(60);

impl ControlPlane {
    /// Applies every `*.yaml`/`*.yml` file of `dir` (sorted by name; server-side apply, forced),
    /// then waits until each CustomResourceDefinition among them is `Established` and all its
    /// served versions appear in discovery and can be listed.
    pub async fn install_crds(&self, dir: &Path) -> Result<(), Error> {
        let mut files: Vec<PathBuf> = fs::read_dir(dir)
            .map_err(Error::io(format!("reading {}", dir.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        files.sort();
        let mut crds = Vec::new();
        for f in &files {
            let text =
                fs::read_to_string(f).map_err(Error::io(format!("reading {}", f.display())))?;
            let objs = parse_documents(&text).map_err(|e| match e {
                Error::Manifest { location, detail } => Error::Manifest {
                    location: format!(" {}{location}", f.display()),
                    detail,
                },
                other => other,
            })?;
            for o in &objs {
                if o.types
                    .as_ref()
                    .is_some_and(|t| t.kind == "CustomResourceDefinition")
                {
                    let crd: CustomResourceDefinition =
                        serde_json::from_value(serde_json::to_value(o).map_err(|e| {
                            Error::Manifest {
                                location: format!(" {}", f.display()),
                                detail: e.to_string(),
                            }
                        })?)
                        .map_err(|e| Error::Manifest {
                            location: format!(" {}", f.display()),
                            detail: e.to_string(),
                        })?;
                    crds.push(crd);
                }
            }
            self.apply_objects(objs, "default").await?;
        }
        for crd in &crds {
            self.wait_crd(crd).await?;
        }
        Ok(())
    }

    async fn wait_crd(&self, crd: &CustomResourceDefinition) -> Result<(), Error> {
        let client = self.admin_client_checked()?;
        let name = crd.metadata.name.clone().unwrap_or_default();
        let api: Api<CustomResourceDefinition> = Api::all(client.clone());
        let established = tokio::time::timeout(
            CRD_TIMEOUT,
            await_condition(api, &name, conditions::is_crd_established()),
        );
        match established.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err(Error::Timeout {
                    what: format!("CRD {name} to become Established ({e})"),
                    timeout: CRD_TIMEOUT,
                    log_tail: String::new(),
                });
            }
            Err(_) => {
                return Err(Error::Timeout {
                    what: format!("CRD {name} to become Established"),
                    timeout: CRD_TIMEOUT,
                    log_tail: String::new(),
                });
            }
        }
        let group = &crd.spec.group;
        let plural = &crd.spec.names.plural;
        let deadline = Instant::now() + CRD_TIMEOUT;
        for v in crd.spec.versions.iter().filter(|v| v.served) {
            let gv = format!("{group}/{}", v.name);
            loop {
                let found = client
                    .list_api_group_resources(&gv)
                    .await
                    .is_ok_and(|l| l.resources.iter().any(|r| &r.name == plural));
                if found {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(Error::Timeout {
                        what: format!("{plural}.{gv} to appear in discovery"),
                        timeout: CRD_TIMEOUT,
                        log_tail: String::new(),
                    });
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            self.wait_listable(&client, crd, &v.name, deadline).await?;
        }
        Ok(())
    }

    /// Waits until the kind can be listed from the API server's watch cache: right after a CRD is
    /// created or changed, its storage initializes and lists and watches answer 429 "storage is
    /// (re)initializing" for a moment.
    async fn wait_listable(
        &self,
        client: &Client,
        crd: &CustomResourceDefinition,
        version: &str,
        deadline: Instant,
    ) -> Result<(), Error> {
        let names = &crd.spec.names;
        let gvk = GroupVersionKind::gvk(&crd.spec.group, version, &names.kind);
        let resource = ApiResource::from_gvk_with_plural(&gvk, &names.plural);
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        loop {
            match api.list(&ListParams::default().match_any().limit(1)).await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(Error::Timeout {
                        what: format!("{}.{} to be listable ({e})", names.plural, crd.spec.group),
                        timeout: CRD_TIMEOUT,
                        log_tail: String::new(),
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Server-side applies (forced, field manager [`FIELD_MANAGER`]) every document of a
    /// multi-document YAML string, resolving each kind through discovery. Namespaced objects
    /// without `metadata.namespace` go to `default_namespace`. Empty documents are skipped; kinds
    /// not yet in discovery (e.g. of a CRD applied just before) are waited for up to 30 s.
    pub async fn apply_yaml(&self, yaml: &str, default_namespace: &str) -> Result<(), Error> {
        let objs = parse_documents(yaml)?;
        self.apply_objects(objs, default_namespace).await
    }

    async fn apply_objects(
        &self,
        objs: Vec<DynamicObject>,
        default_namespace: &str,
    ) -> Result<(), Error> {
        let client = self.admin_client_checked()?;
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        for (i, obj) in objs.into_iter().enumerate() {
            let bad = |detail: String| Error::Manifest {
                location: format!(" (document {i})"),
                detail,
            };
            let types = obj
                .types
                .clone()
                .ok_or_else(|| bad("missing apiVersion/kind".into()))?;
            let gvk = GroupVersionKind::try_from(&types).map_err(|e| bad(e.to_string()))?;
            let name = obj
                .metadata
                .name
                .clone()
                .ok_or_else(|| bad("missing metadata.name".into()))?;
            let (ar, caps) = resolve_kind(&client, &gvk).await?;
            let api: Api<DynamicObject> = match caps.scope {
                Scope::Namespaced => {
                    let ns = obj
                        .metadata
                        .namespace
                        .clone()
                        .unwrap_or_else(|| default_namespace.to_owned());
                    Api::namespaced_with(client.clone(), &ns, &ar)
                }
                Scope::Cluster => Api::all_with(client.clone(), &ar),
            };
            api.patch(&name, &pp, &Patch::Apply(&obj))
                .await
                .map_err(Error::kube(format!("applying {} {name}", gvk.kind)))?;
        }
        Ok(())
    }
}

/// Discovery for one kind, waiting up to 30 s for kinds that are about to be served.
async fn resolve_kind(
    client: &Client,
    gvk: &GroupVersionKind,
) -> Result<(kube::api::ApiResource, kube::discovery::ApiCapabilities), Error> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match discovery::pinned_kind(client, gvk).await {
            Ok(found) => return Ok(found),
            Err(e) if Instant::now() >= deadline => {
                return Err(Error::UnknownKind {
                    gvk: format!("{}/{}/{}", gvk.group, gvk.version, gvk.kind),
                    source: Box::new(e),
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Parses a multi-document YAML string into objects, skipping empty documents.
fn parse_documents(yaml: &str) -> Result<Vec<DynamicObject>, Error> {
    use serde::Deserialize as _;
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
        let bad = |detail: String| Error::Manifest {
            location: format!(" (document {i})"),
            detail,
        };
        let value = serde_json::Value::deserialize(doc).map_err(|e| bad(e.to_string()))?;
        if value.is_null() || value.as_object().is_some_and(|m| m.is_empty()) {
            continue;
        }
        let obj: DynamicObject = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
        out.push(obj);
    }
    Ok(out)
}

/// The names of all custom resources defined in `dir` (`<plural>.<group>`), for callers that want
/// to check what [`ControlPlane::install_crds`] will install.
pub fn crd_names_in(dir: &Path) -> Result<BTreeSet<String>, Error> {
    let mut names = BTreeSet::new();
    for e in fs::read_dir(dir)
        .map_err(Error::io(format!("reading {}", dir.display())))?
        .flatten()
    {
        let p = e.path();
        if !p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            continue;
        }
        let text = fs::read_to_string(&p).map_err(Error::io(format!("reading {}", p.display())))?;
        for o in parse_documents(&text)? {
            if o.types
                .as_ref()
                .is_some_and(|t| t.kind == "CustomResourceDefinition")
                && let Some(n) = o.metadata.name
            {
                names.insert(n);
            }
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_multi_document_yaml() {
        let docs = parse_documents(
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n---\n---\n",
        )
        .unwrap();
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].metadata.name.as_deref(), Some("a"));
    }
}

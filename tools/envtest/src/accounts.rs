//! Who talks to the plane: namespaces for tests, ServiceAccount clients (TokenRequest API) and
//! clients for any bearer token.

use std::{fs, path::PathBuf};

use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::{Namespace, ServiceAccount},
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};

use crate::{
    ControlPlane, Error,
    credentials::random_suffix,
    kubeconfig::{client_from_config, config_from_kubeconfig, kubeconfig_yaml},
};

impl ControlPlane {
    /// Writes a kubeconfig for this server with the given bearer token into the plane's dir and
    /// returns its path and a client using it.
    pub async fn token_client(
        &self,
        name: &str,
        token: &str,
        namespace: &str,
    ) -> Result<(Client, PathBuf), Error> {
        let yaml = kubeconfig_yaml(&self.server_url(), self.ca_pem(), name, token, namespace);
        let path = self.guard.dir.join(format!("kubeconfig-{name}"));
        fs::write(&path, &yaml).map_err(Error::io(format!("writing {}", path.display())))?;
        let client = client_from_config(config_from_kubeconfig(&yaml).await?)?;
        Ok((client, path))
    }

    /// Creates a namespace named `<prefix>-<5 random [a-z0-9]>` and returns its name.
    pub async fn create_namespace(&self, prefix: &str) -> Result<String, Error> {
        let api: Api<Namespace> = Api::all(self.admin_client_checked()?);
        loop {
            let name = format!("{prefix}-{}", random_suffix(5)?);
            let ns = Namespace {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    ..Default::default()
                },
                ..Default::default()
            };
            match api.create(&PostParams::default(), &ns).await {
                Ok(_) => return Ok(name),
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(Error::kube(format!("creating namespace {name}"))(e)),
            }
        }
    }

    /// Creates ServiceAccount `namespace/sa` if missing, mints a 24 h token for it through the
    /// TokenRequest API, and returns a client using that bearer token plus the path of a
    /// kubeconfig file holding it (for running the operator binary as that ServiceAccount).
    pub async fn service_account_client(
        &self,
        namespace: &str,
        sa: &str,
    ) -> Result<(Client, PathBuf), Error> {
        let api: Api<ServiceAccount> = Api::namespaced(self.admin_client_checked()?, namespace);
        let obj = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(sa.to_owned()),
                ..Default::default()
            },
            ..Default::default()
        };
        match api.create(&PostParams::default(), &obj).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => {
                return Err(Error::kube(format!(
                    "creating ServiceAccount {namespace}/{sa}"
                ))(e));
            }
        }
        let req = TokenRequest {
            spec: Some(TokenRequestSpec {
                expiration_seconds: Some(24 * 3600),
                ..Default::default()
            }),
            ..Default::default()
        };
        let tr = api
            .create_token_request(sa, &PostParams::default(), &req)
            .await
            .map_err(Error::kube(format!(
                "requesting a token for {namespace}/{sa}"
            )))?;
        let token = tr.status.and_then(|s| s.token).unwrap_or_default();
        self.token_client(&format!("sa-{namespace}-{sa}"), &token, namespace)
            .await
    }
}

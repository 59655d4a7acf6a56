//! Kubeconfig files for the admin and for ServiceAccounts, and clients built from them.

use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};

use crate::Error;

fn base64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// A kubeconfig with one cluster, one bearer-token user and one context.
pub(crate) fn kubeconfig_yaml(
    server: &str,
    ca_pem: &str,
    user: &str,
    token: &str,
    namespace: &str,
) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: envtest\n  cluster:\n    server: {server}\n    \
         certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n    token: \"{token}\"\n\
         contexts:\n- name: envtest\n  context:\n    cluster: envtest\n    user: {user}\n    namespace: {namespace}\n\
         current-context: envtest\n",
        ca = base64(ca_pem.as_bytes()),
    )
}

/// The client configuration a kubeconfig describes.
pub(crate) async fn config_from_kubeconfig(yaml: &str) -> Result<Config, Error> {
    let kc = Kubeconfig::from_yaml(yaml)?;
    Ok(Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?)
}

/// A client for `config`, bound to the current Tokio runtime.
pub(crate) fn client_from_config(config: Config) -> Result<Client, Error> {
    Client::try_from(config).map_err(Error::kube("building a client"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_parses() {
        let y = kubeconfig_yaml("https://127.0.0.1:1", "PEM", "u", "t.o-k_en", "ns");
        let kc = Kubeconfig::from_yaml(&y).unwrap();
        assert_eq!(kc.current_context.as_deref(), Some("envtest"));
        assert_eq!(
            kc.contexts[0]
                .context
                .as_ref()
                .unwrap()
                .namespace
                .as_deref(),
            Some("ns")
        );
    }
}

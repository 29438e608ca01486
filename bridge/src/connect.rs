//! How the bridge logs in to NATS: the secrets it sends and the TLS that
//! protects them. A token or password goes only over TLS, unless the
//! config says the link is private already (loopback needs no saying).

use crate::config::Nats;

/// Whether the connection must be TLS: asked for, or implied by a CA, a
/// client certificate or `tls://` servers (a CA or certificate given for a
/// plain connection would otherwise be ignored without a word).
pub fn tls_required(nats: &Nats) -> bool {
    nats.tls
        || nats.tls_ca.is_some()
        || nats.tls_cert.is_some()
        || nats
            .servers
            .iter()
            .any(|server| server.starts_with("tls://"))
}

/// The secret a plain connection would send in clear, if any: a token, a
/// password, or one written into a server URL. (A credentials file's seed
/// never leaves the machine: the server sends a nonce, the client signs it.)
fn cleartext_secret(nats: &Nats) -> Option<&'static str> {
    if nats.token.is_some() {
        Some("nats.token")
    } else if nats.password.is_some() {
        Some("nats.password")
    } else if nats.servers.iter().any(|server| {
        url::Url::parse(server)
            .is_ok_and(|url| !url.username().is_empty() || url.password().is_some())
    }) {
        Some("a user or password in nats.servers")
    } else {
        None
    }
}

/// Whether a server URL names this machine (its loopback).
fn is_loopback(server: &str) -> bool {
    let Ok(url) = url::Url::parse(server) else {
        return false;
    };
    match url.host() {
        // A URL of a scheme it does not know keeps an address as text.
        Some(url::Host::Domain(name)) => {
            name == "localhost"
                || name
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Refuses a config that would send a secret in clear over a network.
pub fn check(nats: &Nats) -> Result<(), String> {
    if tls_required(nats) || nats.allow_plaintext_auth {
        return Ok(());
    }
    let Some(secret) = cleartext_secret(nats) else {
        return Ok(());
    };
    match nats.servers.iter().find(|server| !is_loopback(server)) {
        Some(server) => Err(format!(
            "{secret} would cross the network in clear to {server}: turn TLS on (tls = true, \
             tls_ca, or tls:// servers), use a credentials file, or set \
             allow_plaintext_auth = true if the link is private already"
        )),
        None => Ok(()),
    }
}

/// The client's options from the config (its checks already passed).
pub async fn options(nats: &Nats) -> anyhow::Result<async_nats::ConnectOptions> {
    use anyhow::Context as _;
    let mut options = async_nats::ConnectOptions::new();
    if let Some(token) = &nats.token {
        options = options.token(token.clone());
    }
    if let (Some(user), Some(password)) = (&nats.user, &nats.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(path) = &nats.credentials {
        options = options
            .credentials_file(path)
            .await
            .with_context(|| format!("cannot read NATS credentials {}", path.display()))?;
    }
    if tls_required(nats) {
        options = options.require_tls(true);
    }
    if let Some(ca) = &nats.tls_ca {
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&nats.tls_cert, &nats.tls_key) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nats(servers: &[&str], extra: &str) -> Nats {
        let text = format!(
            "servers = [{}]\n{extra}",
            servers
                .iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        toml::from_str(&text).unwrap()
    }

    #[test]
    fn a_secret_goes_in_clear_only_where_allowed() {
        let remote = ["nats://10.0.0.5:4222"];
        for extra in ["token = \"t\"", "user = \"a\"\npassword = \"p\""] {
            let err = check(&nats(&remote, extra)).unwrap_err();
            assert!(err.contains("in clear to nats://10.0.0.5:4222"), "{err}");
            for fine in [
                "tls = true",
                "tls_ca = \"/ca.pem\"",
                "tls_cert = \"/c.pem\"\ntls_key = \"/c.key\"",
                "allow_plaintext_auth = true",
            ] {
                check(&nats(&remote, &format!("{extra}\n{fine}"))).unwrap();
            }
            check(&nats(&["tls://10.0.0.5:4222"], extra)).unwrap();
            check(&nats(
                &["nats://127.0.0.1:4222", "nats://[::1]:4222"],
                extra,
            ))
            .unwrap();
            check(&nats(&["nats://localhost:4222"], extra)).unwrap();
            // One remote server among loopback ones is enough to refuse.
            assert!(check(&nats(&["nats://127.0.0.1:4222", remote[0]], extra)).is_err());
        }
        assert!(check(&nats(&["nats://a:p@10.0.0.5:4222"], "")).is_err());
        check(&nats(&remote, "credentials = \"/n.creds\"")).unwrap();
        check(&nats(&remote, "")).unwrap();
    }

    #[test]
    fn a_ca_or_certificate_turns_tls_on() {
        assert!(!tls_required(&nats(&["nats://10.0.0.5:4222"], "")));
        for extra in [
            "tls = true",
            "tls_ca = \"/ca.pem\"",
            "tls_cert = \"/c.pem\"\ntls_key = \"/c.key\"",
        ] {
            assert!(
                tls_required(&nats(&["nats://10.0.0.5:4222"], extra)),
                "{extra}"
            );
        }
        assert!(tls_required(&nats(&["tls://10.0.0.5:4222"], "")));
    }
}

//! TLS: certificates in, a `rustls::ServerConfig` out, and self-signed
//! certificates for a LAN.
//!
//! The connections themselves run TLS inside the event loop (`net::Stream`
//! wraps a non-blocking `rustls::ServerConnection`), so a token in a URL is
//! never readable on shop-floor Wi-Fi. This module only builds and checks the
//! configuration: TLS 1.2 and 1.3 with rustls' safe defaults (no SSLv3, TLS
//! 1.0/1.1, RC4, CBC-SHA1 or export ciphers exist in rustls at all), and
//! ALPN `http/1.1`.

use std::fmt::Write as _;
use std::fs;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use sha2::{Digest as _, Sha256};

/// Loads a PEM certificate chain and private key into a server config.
pub fn load(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read the certificate {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{} is not a PEM certificate: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{} holds no certificate", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read a PEM private key from {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("the certificate and key do not go together: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A certificate and key for `names` and `ips`, self-signed.
pub struct SelfSigned {
    pub cert_pem: String,
    pub key_pem: String,
    /// SHA-256 of the DER certificate, as `AB:CD:…`.
    pub fingerprint: String,
}

/// Makes a self-signed certificate valid for `days` days.
pub fn self_signed(names: &[String], ips: &[IpAddr], days: u32) -> Result<SelfSigned, String> {
    let mut sans: Vec<String> = names.to_vec();
    sans.extend(ips.iter().map(|ip| ip.to_string()));
    let mut params = rcgen::CertificateParams::new(sans).map_err(|e| format!("bad name: {e}"))?;
    let now = std::time::SystemTime::now();
    params.not_before = now.into();
    params.not_after = (now + std::time::Duration::from_secs(86400 * days as u64)).into();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, names.first().cloned().unwrap_or_else(|| "roostd".into()));
    // What strict clients look for in a server certificate: Apple devices
    // want serverAuth; validators want the key identifiers.
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    let key = rcgen::KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
    let cert = params.self_signed(&key).map_err(|e| format!("cannot sign the certificate: {e}"))?;
    Ok(SelfSigned { cert_pem: cert.pem(), key_pem: key.serialize_pem(), fingerprint: fingerprint(cert.der()) })
}

/// SHA-256 fingerprint of a DER certificate, colon-separated hex.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let mut out = String::with_capacity(95);
    for (i, b) in digest.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        let _ = write!(out, "{b:02X}");
    }
    out
}

/// The fingerprint of the first certificate in a PEM file.
pub fn file_fingerprint(cert: &Path) -> Result<String, String> {
    let text = fs::read(cert).map_err(|e| format!("cannot read {}: {e}", cert.display()))?;
    let der = CertificateDer::from_pem_slice(&text).map_err(|e| format!("{}: {e}", cert.display()))?;
    Ok(fingerprint(&der))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_certificate_loads() {
        let dir = tempfile::tempdir().unwrap();
        let made = self_signed(&["pi.local".into()], &["192.168.1.20".parse().unwrap()], 30).unwrap();
        assert_eq!(made.fingerprint.len(), 95);
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        fs::write(&c, &made.cert_pem).unwrap();
        fs::write(&k, &made.key_pem).unwrap();
        let config = load(&c, &k).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert_eq!(file_fingerprint(&c).unwrap(), made.fingerprint);
        // A key that is not this certificate's is refused with a reason.
        let other = self_signed(&["x".into()], &[], 1).unwrap();
        fs::write(&k, &other.key_pem).unwrap();
        assert!(load(&c, &k).unwrap_err().contains("do not go together"));
        fs::write(&c, "not pem").unwrap();
        assert!(load(&c, &k).is_err());
    }
}

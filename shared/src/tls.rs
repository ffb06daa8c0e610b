//! The cluster's identity: one CA signs every certificate; this module makes them and builds the
//! rustls and quinn configurations that check them.
//!
//! - Coordinators carry [`COORDINATOR_NAME`] (plus loopback and any configured names for the HTTPS
//!   API) and every client verifies that fixed name, whatever address it dialled.
//! - A host's certificate names the host (`CN` and a DNS SAN) and has a random serial; the
//!   coordinator looks the serial up to know which host is calling, and revokes by serial.
//! - Before it has a certificate, a host trusts the coordinator through the CA fingerprint in its
//!   join token ([`enroll_client_config`]), as kubeadm's discovery hash does.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use rand::Rng;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

use crate::ids::HostName;

/// The name every coordinator's certificate carries and every client verifies.
pub const COORDINATOR_NAME: &str = "coordinator.fifty.internal";

/// How long a host certificate is valid. Re-joining issues a new one.
pub const HOST_CERT_VALIDITY: Duration = Duration::from_secs(5 * 365 * 24 * 3600);

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct CertAndKey {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key (PKCS#8), PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for CertAndKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAndKey").field("key_pem", &"<redacted>").finish_non_exhaustive()
    }
}

/// The one crypto provider Fifty uses (ring), passed explicitly to every config.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// SHA-256 of a certificate's DER, lower-case hex: the CA fingerprint carried in join tokens.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    hex::encode(Sha256::digest(cert.as_ref()))
}

/// Parses the first certificate of a PEM text.
pub fn cert_from_pem(pem: &str) -> Result<CertificateDer<'static>> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| anyhow!("parse certificate PEM: {e}"))
}

fn key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| anyhow!("parse private key PEM: {e}"))
}

fn validity(params: &mut CertificateParams, valid_for: Duration) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + valid_for;
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationName, "fifty");
    dn
}

/// A serial of 16 random bytes, positive and without a leading zero, so its DER bytes are exactly
/// these bytes and [`cert_serial`] reads back the same hex.
pub fn random_serial() -> Vec<u8> {
    let mut rng = rand::rng();
    let mut serial: Vec<u8> = (0..16).map(|_| rng.random()).collect();
    serial[0] = rng.random_range(0x01..=0x7f);
    serial
}

/// Creates a new cluster CA (ECDSA P-256, ten years).
pub fn new_cluster_ca() -> Result<CertAndKey> {
    let key = KeyPair::generate().context("generate CA key")?;
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name("Fifty cluster CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
    validity(&mut params, Duration::from_secs(10 * 365 * 24 * 3600));
    let cert = params.self_signed(&key).context("self-sign CA")?;
    Ok(CertAndKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

fn issuer(ca: &CertAndKey) -> Result<Issuer<'static, KeyPair>> {
    let key = KeyPair::from_pem(&ca.key_pem).context("parse CA key")?;
    Issuer::from_ca_cert_pem(&ca.cert_pem, key).context("parse CA certificate")
}

/// Issues a coordinator's certificate: [`COORDINATOR_NAME`], `localhost`, loopback addresses and
/// `extra_names` (host names or IP addresses users dial the HTTPS API by). Good for both server
/// and client auth, so coordinators can also dial each other.
pub fn issue_coordinator_cert(ca: &CertAndKey, extra_names: &[String]) -> Result<CertAndKey> {
    let mut names = vec![COORDINATOR_NAME.to_string(), "localhost".into(), "127.0.0.1".into(), "::1".into()];
    for n in extra_names {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    let mut params = CertificateParams::new(names).context("coordinator certificate names")?;
    params.distinguished_name = common_name(COORDINATOR_NAME);
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, Duration::from_secs(5 * 365 * 24 * 3600));
    let key = KeyPair::generate().context("generate coordinator key")?;
    let cert = params.signed_by(&key, &issuer(ca)?).context("sign coordinator certificate")?;
    Ok(CertAndKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// Makes a host's key pair and a certificate request for it. Runs on the host; the key never
/// leaves it.
pub fn new_host_key_and_csr(host: &HostName) -> Result<(String, String)> {
    let key = KeyPair::generate().context("generate host key")?;
    let mut params = CertificateParams::new(vec![host.to_string()]).context("host certificate name")?;
    params.distinguished_name = common_name(host.as_str());
    let csr = params.serialize_request(&key).context("make certificate request")?;
    Ok((key.serialize_pem(), csr.pem().context("encode certificate request")?))
}

/// Signs a host's certificate request. The coordinator decides what the certificate says (the
/// host name it approved, client-auth only, `serial`); only the public key comes from the request,
/// after its signature is checked.
pub fn sign_host_csr(ca: &CertAndKey, csr_pem: &str, host: &HostName, serial: &[u8]) -> Result<String> {
    let csr = CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| anyhow!("certificate request is not valid: {e}"))?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::DnsName(host.as_str().try_into().context("host name as DNS name")?)];
    params.distinguished_name = common_name(host.as_str());
    params.serial_number = Some(SerialNumber::from_slice(serial));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, HOST_CERT_VALIDITY);
    let cert = params.signed_by(&csr.public_key, &issuer(ca)?).context("sign host certificate")?;
    Ok(cert.pem())
}

/// The serial number of a DER certificate, lower-case hex.
pub fn cert_serial(cert: &CertificateDer<'_>) -> Result<String> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| anyhow!("parse peer certificate: {e}"))?;
    Ok(hex::encode(parsed.tbs_certificate.raw_serial()))
}

/// Whether a DER certificate is a coordinator's (carries [`COORDINATOR_NAME`]). Only
/// coordinators hold the CA key, so only they can issue such a certificate; host certificates
/// name the host.
pub fn is_coordinator_cert(cert: &CertificateDer<'_>) -> bool {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else { return false };
    let Ok(Some(san)) = parsed.subject_alternative_name() else { return false };
    san.value
        .general_names
        .iter()
        .any(|n| matches!(n, x509_parser::extensions::GeneralName::DNSName(d) if *d == COORDINATOR_NAME))
}

fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    roots.add(cert_from_pem(ca_pem)?).context("add cluster CA to trust roots")?;
    Ok(Arc::new(roots))
}

/// QUIC transport settings for long-lived agent and peer links.
pub fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(2)));
    t.max_idle_timeout(Some(Duration::from_secs(15).try_into().expect("15 s fits a QUIC varint")));
    Arc::new(t)
}

/// QUIC transport settings for coordinator-to-coordinator links: a dead peer must be noticed in
/// about a second or two, not after the agents' 15 s, or the leader keeps writing into a
/// connection nobody reads.
pub fn peer_transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_millis(500)));
    t.max_idle_timeout(Some(Duration::from_secs(2).try_into().expect("2 s fits a QUIC varint")));
    Arc::new(t)
}

/// The coordinator's QUIC server config: presents `identity` with the CA in its chain (so a host
/// can match the CA against its join token's fingerprint), accepts `alpns`, and verifies client
/// certificates against the cluster CA when one is presented. Links that need a client
/// certificate check that one was given after the handshake; a certificate from another CA fails
/// the handshake itself.
pub fn quic_server_config(identity: &CertAndKey, ca_pem: &str, alpns: &[&[u8]]) -> Result<quinn::ServerConfig> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca_pem)?, provider.clone())
        .allow_unauthenticated()
        .build()
        .context("build client verifier")?;
    let chain = vec![cert_from_pem(&identity.cert_pem)?, cert_from_pem(ca_pem)?];
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key_from_pem(&identity.key_pem)?)
        .context("coordinator certificate and key")?;
    tls.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(tls)).context("QUIC TLS config")?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(transport_config());
    Ok(cfg)
}

/// A QUIC client config that trusts the cluster CA, expects [`COORDINATOR_NAME`], speaks `alpn`
/// and presents `identity`.
pub fn quic_client_config(ca_pem: &str, identity: &CertAndKey, alpn: &[u8]) -> Result<quinn::ClientConfig> {
    let provider = provider();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3")?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_auth_cert(vec![cert_from_pem(&identity.cert_pem)?], key_from_pem(&identity.key_pem)?)
        .context("client certificate and key")?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    quic_client(tls)
}

fn quic_client(tls: rustls::ClientConfig) -> Result<quinn::ClientConfig> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls)).context("QUIC TLS config")?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(transport_config());
    Ok(cfg)
}

/// The QUIC client config a host uses to enroll: no client certificate; the coordinator is
/// trusted if its chain holds a CA whose SHA-256 is `ca_fingerprint` and that CA signed a
/// certificate for [`COORDINATOR_NAME`].
pub fn enroll_client_config(ca_fingerprint: &str) -> Result<quinn::ClientConfig> {
    let provider = provider();
    let verifier =
        Arc::new(PinnedCaVerifier { fingerprint: ca_fingerprint.to_lowercase(), provider: provider.clone() });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3")?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = vec![crate::wire::ALPN_ENROLL.to_vec()];
    quic_client(tls)
}

/// Trusts a server whose presented chain contains the CA with a pinned fingerprint, and whose end
/// certificate that CA signed for the expected name.
#[derive(Debug)]
struct PinnedCaVerifier {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates.iter().find(|c| fingerprint(c) == self.fingerprint) else {
            return Err(rustls::Error::General(format!(
                "the coordinator's CA does not match the join token (expected CA fingerprint {})",
                self.fingerprint
            )));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned()).map_err(|e| rustls::Error::General(format!("pinned CA: {e}")))?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(format!("pinned CA verifier: {e}")))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The HTTPS API's server config (no client certificates; clients use bearer tokens).
pub fn https_server_config(identity: &CertAndKey, ca_pem: &str) -> Result<rustls::ServerConfig> {
    let chain = vec![cert_from_pem(&identity.cert_pem)?, cert_from_pem(ca_pem)?];
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key_from_pem(&identity.key_pem)?)
        .context("API certificate and key")?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

/// The CLI's HTTPS client config: trusts only the cluster CA.
pub fn https_client_config(ca_pem: &str) -> Result<rustls::ClientConfig> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots(ca_pem)?)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

/// Checks that `ca_pem` is the CA with `fingerprint`.
pub fn check_ca_fingerprint(ca_pem: &str, expected: &str) -> Result<()> {
    let got = fingerprint(&cert_from_pem(ca_pem)?);
    if got != expected.to_lowercase() {
        bail!("CA fingerprint {got} does not match the expected {expected}");
    }
    Ok(())
}

/// The TLS alert refusing a peer's certificate that a QUIC close carries, by name, given the
/// close's transport error code (TLS alerts travel as 0x100 + the alert); None for any other code.
/// Each one means the certificate will not be accepted as it is: retrying cannot help.
pub fn certificate_alert(quic_code: u64) -> Option<&'static str> {
    Some(match quic_code.checked_sub(0x100)? {
        42 => "bad_certificate",
        43 => "unsupported_certificate",
        44 => "certificate_revoked",
        45 => "certificate_expired",
        46 => "certificate_unknown",
        48 => "unknown_ca",
        49 => "access_denied",
        51 => "decrypt_error",
        116 => "certificate_required",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_host_certificate_names_the_host_and_keeps_the_serial() {
        let ca = new_cluster_ca().unwrap();
        let host = HostName::new("web-1").unwrap();
        let (_key, csr) = new_host_key_and_csr(&host).unwrap();
        let serial = random_serial();
        let cert = sign_host_csr(&ca, &csr, &host, &serial).unwrap();
        let der = cert_from_pem(&cert).unwrap();
        assert_eq!(cert_serial(&der).unwrap(), hex::encode(&serial));
        let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        let cn = parsed.subject().iter_common_name().next().unwrap().as_str().unwrap().to_string();
        assert_eq!(cn, "web-1");
    }

    #[test]
    fn only_coordinator_certificates_pass_as_coordinators() {
        let ca = new_cluster_ca().unwrap();
        let coord = issue_coordinator_cert(&ca, &[]).unwrap();
        assert!(is_coordinator_cert(&cert_from_pem(&coord.cert_pem).unwrap()));
        let host = HostName::new("web-1").unwrap();
        let (_k, csr) = new_host_key_and_csr(&host).unwrap();
        let cert = sign_host_csr(&ca, &csr, &host, &random_serial()).unwrap();
        assert!(!is_coordinator_cert(&cert_from_pem(&cert).unwrap()));
    }

    #[test]
    fn a_tampered_csr_is_refused() {
        let ca = new_cluster_ca().unwrap();
        let host = HostName::new("web-1").unwrap();
        assert!(sign_host_csr(
            &ca,
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            &host,
            &random_serial()
        )
        .is_err());
    }
}

//! TLS for PostgreSQL connections over rustls (no OpenSSL): the `MakeTlsConnect` that
//! tokio-postgres, under the deadpool pool, calls for every connection it opens.
//!
//! What is checked follows libpq's `sslmode` (see `postgres_connect.rs` for how a mode is chosen):
//! - [`Verify::None`] (`prefer`, `require` without a root certificate): encrypted, the certificate
//!   not checked, only the handshake's own signatures;
//! - [`Verify::Chain`] (`verify-ca`, and `prefer`/`require` given a root certificate): the chain
//!   up to the root certificates, not the host name;
//! - [`Verify::Full`] (`verify-full`): the chain and that the certificate names the host
//!   (subjectAltName, as webpki checks it: a DNS name or an IP address; no common-name fallback).
//!
//! For `require` and above the connector sends the SSLRequest itself (tokio-postgres is told the
//! negotiation is "direct"): a server that answers "no TLS" then fails the connection with
//! [`TlsError::NotOffered`], a type the store can tell apart from other failures, before any
//! password is sent.

use std::{
    fmt,
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use rustls::{
    client::{
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        WebPkiServerVerifier,
    },
    crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms},
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_postgres::{
    tls::{ChannelBinding, MakeTlsConnect, TlsConnect},
    Socket,
};

/// The SSLRequest message: length 8, then the request code 80877103 (1234 << 16 | 5679).
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// How much of the server's certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verify {
    /// Nothing but the handshake's signatures: encryption against passive eavesdroppers only.
    None,
    /// The chain up to the root certificates, not the name.
    Chain,
    /// The chain and the host name.
    Full,
}

/// Why a TLS connection to the server failed.
#[derive(Debug)]
pub enum TlsError {
    /// The server answered the SSLRequest with "no TLS" (`ssl = off`, or a server without TLS),
    /// and the mode (`require` and above) forbids plain text.
    NotOffered { mode: &'static str },
    /// Reading or writing the SSLRequest failed.
    Io(io::Error),
    /// The host cannot be a TLS server name.
    Name(String),
    /// The handshake failed: the certificate was refused, or the server broke it off.
    Handshake { host: String, error: io::Error },
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotOffered { mode } => {
                write!(f, "the server does not offer TLS, and sslmode {mode} refuses to connect without it")
            }
            Self::Io(e) => write!(f, "TLS negotiation failed: {e}"),
            Self::Name(host) => write!(f, "{host:?} cannot be checked against a certificate (not a DNS name or IP address)"),
            Self::Handshake { host, error } => {
                let rustls = error.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>());
                match rustls {
                    Some(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)) => write!(
                        f,
                        "the server's certificate is not signed by a certificate authority of sslrootcert (unknown issuer)"
                    ),
                    Some(rustls::Error::InvalidCertificate(
                        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
                    )) => write!(f, "the server's certificate does not name the host {host:?} (sslmode verify-full checks the name)"),
                    Some(rustls::Error::InvalidCertificate(e)) => write!(f, "the server's certificate is refused: {e:?}"),
                    Some(e) => write!(f, "TLS handshake with {host} failed: {e}"),
                    None => write!(f, "TLS handshake with {host} failed: {error}"),
                }
            }
        }
    }
}

impl std::error::Error for TlsError {}

/// The TLS side of a PostgreSQL connection: off, or a rustls configuration.
#[derive(Clone)]
pub struct PostgresTls {
    inner: Option<Arc<Connector>>,
}

struct Connector {
    config: Arc<ClientConfig>,
    /// Whether this connector sends the SSLRequest (`require` and above) or tokio-postgres did.
    negotiate: bool,
    /// The mode's libpq name, for [`TlsError::NotOffered`].
    mode: &'static str,
}

impl fmt::Debug for PostgresTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            None => f.write_str("PostgresTls(off)"),
            Some(c) => write!(f, "PostgresTls({}, negotiate: {})", c.mode, c.negotiate),
        }
    }
}

impl PostgresTls {
    /// No TLS: only for a configuration whose `sslmode` is `disable`.
    pub fn off() -> Self {
        Self { inner: None }
    }

    /// TLS checking `verify` (with `roots` for [`Verify::Chain`] and [`Verify::Full`]),
    /// presenting `client` (a certificate chain and its key) when given. `negotiate`: this
    /// connector sends the SSLRequest itself (see the module's doc). `mode` names the sslmode in
    /// errors.
    pub fn new(
        verify: Verify,
        roots: RootCertStore,
        client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
        negotiate: bool,
        mode: &'static str,
    ) -> Result<Self, rustls::Error> {
        // ring rather than rustls' default aws-lc-rs, which builds AWS-LC with cmake: ring's
        // provider lacks only the post-quantum key exchange (rustls deprecates it for that), and
        // PostgreSQL's OpenSSL agrees on X25519 or P-256 with it.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
        let builder = match verify {
            Verify::Full => builder.with_root_certificates(roots),
            Verify::Chain => {
                let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| rustls::Error::General(e.to_string()))?;
                builder.dangerous().with_custom_certificate_verifier(Arc::new(ChainOnly(webpki)))
            }
            Verify::None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unchecked(provider.signature_verification_algorithms))),
        };
        let mut config = match client {
            Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
            None => builder.with_no_client_auth(),
        };
        // PostgreSQL 17 requires this ALPN name for direct TLS and accepts it otherwise; older
        // servers ignore it.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(Self { inner: Some(Arc::new(Connector { config: Arc::new(config), negotiate, mode })) })
    }

    /// Whether connections are encrypted.
    pub fn is_on(&self) -> bool {
        self.inner.is_some()
    }
}

/// `verify-ca`: webpki's verdict without its host-name check. webpki checks the chain (and
/// revocation) before the name, so a name error means the chain was accepted.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. })) => {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require` without a root certificate: any certificate, as libpq accepts then.
/// The handshake's signatures are still checked, so the peer holds the certificate's key.
#[derive(Debug)]
struct Unchecked(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

impl MakeTlsConnect<Socket> for PostgresTls {
    type Stream = TlsStream;
    type TlsConnect = Connect;
    type Error = TlsError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Connect, TlsError> {
        Ok(Connect { inner: self.inner.clone(), host: domain.to_owned() })
    }
}

/// One connection's handshake.
pub struct Connect {
    inner: Option<Arc<Connector>>,
    host: String,
}

impl TlsConnect<Socket> for Connect {
    type Stream = TlsStream;
    type Error = TlsError;
    type Future = Pin<Box<dyn Future<Output = Result<TlsStream, TlsError>> + Send>>;

    fn connect(self, mut stream: Socket) -> Self::Future {
        Box::pin(async move {
            // tokio-postgres asks for a handshake only when sslmode is not `disable`, and a
            // configuration with another mode always has a connector (postgres_connect.rs).
            let Some(connector) = self.inner else { return Err(TlsError::NotOffered { mode: "disable" }) };
            if connector.negotiate {
                stream.write_all(&SSL_REQUEST).await.map_err(TlsError::Io)?;
                let mut answer = [0u8];
                stream.read_exact(&mut answer).await.map_err(TlsError::Io)?;
                if answer[0] != b'S' {
                    return Err(TlsError::NotOffered { mode: connector.mode });
                }
            }
            let name = ServerName::try_from(self.host.clone()).map_err(|_| TlsError::Name(self.host.clone()))?;
            let stream = tokio_rustls::TlsConnector::from(connector.config.clone())
                .connect(name, stream)
                .await
                .map_err(|error| TlsError::Handshake { host: self.host, error })?;
            Ok(TlsStream(stream))
        })
    }
}

/// An encrypted connection.
pub struct TlsStream(tokio_rustls::client::TlsStream<Socket>);

impl AsyncRead for TlsStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl tokio_postgres::tls::TlsStream for TlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}


//! Grafana Pyroscope's push API: `push.v1.PusherService/Push` over the
//! Connect protocol (a unary call is a plain HTTP POST: protobuf body,
//! `Content-Type: application/proto`, `Connect-Protocol-Version: 1`), the
//! API Grafana's own SDKs and Alloy's `pyroscope.write` use.
//!
//! A request carries one series per profile of the interval: its labels
//! (`__name__`, `service_name`, the configured ones) and the profile as
//! gzipped pprof. The messages are those of `api/push/v1/push.proto` and
//! `api/types/v1/types.proto` in grafana/pyroscope, written out by hand for
//! prost (as `render::pprof` does for pprof) so that building needs no
//! `protoc`; the end-to-end tests decode requests with the upstream
//! definitions reproduced independently.

use bytes::Bytes;
use prost::Message as _;

use crate::config::PyroscopeSettings;
use crate::transport::outbound::http::{Destination, HttpTransport};

/// The push API's messages, with only the fields this agent sends.
pub(crate) mod proto {
    /// `push.v1.PushRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct PushRequest {
        #[prost(message, repeated, tag = "1")]
        pub(crate) series: Vec<RawProfileSeries>,
    }

    /// `push.v1.RawProfileSeries` (its `annotations`, field 3, are dropped
    /// by Pyroscope's distributors when pushed, so none are sent).
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct RawProfileSeries {
        #[prost(message, repeated, tag = "1")]
        pub(crate) labels: Vec<LabelPair>,
        #[prost(message, repeated, tag = "2")]
        pub(crate) samples: Vec<RawSample>,
    }

    /// `types.v1.LabelPair`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct LabelPair {
        #[prost(string, tag = "1")]
        pub(crate) name: String,
        #[prost(string, tag = "2")]
        pub(crate) value: String,
    }

    /// `push.v1.RawSample`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct RawSample {
        /// The profile: gzipped pprof.
        #[prost(bytes = "vec", tag = "1")]
        pub(crate) raw_profile: Vec<u8>,
        /// A unique id of the profile (`ID` in the proto).
        #[prost(string, tag = "2")]
        pub(crate) id: String,
    }
}

/// Builds requests for one server: the series labels every profile shares.
pub(crate) struct RequestBuilder {
    /// `service_name` and the configured labels, sorted by name; `__name__`
    /// goes in front of each series' copy.
    common: Vec<proto::LabelPair>,
}

impl RequestBuilder {
    pub(crate) fn new(settings: &PyroscopeSettings, service_name: &str) -> RequestBuilder {
        let mut common: Vec<proto::LabelPair> = settings
            .labels
            .iter()
            .map(|(name, value)| proto::LabelPair {
                name: name.clone(),
                value: value.clone(),
            })
            .collect();
        common.push(proto::LabelPair {
            name: "service_name".into(),
            value: service_name.into(),
        });
        common.sort_by(|a, b| a.name.cmp(&b.name));
        RequestBuilder { common }
    }

    /// One request: a series per `(name, gzipped pprof)`.
    pub(crate) fn request<'a>(
        &self,
        profiles: impl IntoIterator<Item = (&'static str, Vec<u8>)> + 'a,
    ) -> Bytes {
        let mut random = crate::sampler::random::SplitMix64::seeded();
        let series = profiles
            .into_iter()
            .map(|(name, pprof)| {
                // Prometheus order: by name; `__name__` sorts first.
                let mut labels = Vec::with_capacity(self.common.len() + 1);
                labels.push(proto::LabelPair {
                    name: "__name__".into(),
                    value: name.into(),
                });
                labels.extend(self.common.iter().cloned());
                proto::RawProfileSeries {
                    labels,
                    samples: vec![proto::RawSample {
                        raw_profile: pprof,
                        id: uuid(random.next_u64(), random.next_u64()),
                    }],
                }
            })
            .collect();
        Bytes::from(proto::PushRequest { series }.encode_to_vec())
    }
}

/// A random (version 4) UUID in its usual text form.
fn uuid(high: u64, low: u64) -> String {
    let high = (high & !0xf000) | 0x4000;
    let low = (low & !(0xc << 60)) | (0x8 << 60);
    let value = (u128::from(high) << 64) | u128::from(low);
    let hex = format!("{value:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// The HTTP client for the server's push route.
pub(crate) fn transport(settings: &PyroscopeSettings) -> Result<HttpTransport, String> {
    let mut headers = vec![
        ("content-type".to_owned(), "application/proto".to_owned()),
        ("connect-protocol-version".to_owned(), "1".to_owned()),
        (
            "user-agent".to_owned(),
            concat!("smolder/", env!("CARGO_PKG_VERSION")).to_owned(),
        ),
    ];
    headers.extend(settings.headers.iter().cloned());
    HttpTransport::new(&Destination {
        url: &settings.push_url(),
        noun: "Pyroscope server",
        headers,
        // The profiles inside are gzipped already; the envelope is small.
        gzip: false,
        tls: &Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    #[test]
    fn series_carry_the_name_the_service_and_the_labels_sorted() {
        let settings = PyroscopeSettings {
            url: "http://p:4040".into(),
            headers: Vec::new(),
            labels: vec![("zone".into(), "b".into()), ("env".into(), "prod".into())],
        };
        let builder = RequestBuilder::new(&settings, "checkout");
        let request = builder.request([("process_cpu", vec![1, 2, 3]), ("wall", vec![4])]);
        let decoded = proto::PushRequest::decode(&request[..]).unwrap();
        assert_eq!(decoded.series.len(), 2);
        let names: Vec<(&str, &str)> = decoded.series[0]
            .labels
            .iter()
            .map(|l| (l.name.as_str(), l.value.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("__name__", "process_cpu"),
                ("env", "prod"),
                ("service_name", "checkout"),
                ("zone", "b"),
            ]
        );
        assert_eq!(decoded.series[1].labels[0].value, "wall");
        let samples = &decoded.series[0].samples;
        assert_eq!(samples[0].raw_profile, [1, 2, 3]);
        let id = &samples[0].id;
        assert_eq!((id.len(), &id[14..15]), (36, "4"), "{id}");
        assert_ne!(id, &decoded.series[1].samples[0].id);
    }
}

//! OTLP profiles end to end (the `otlp-profiles` feature): the `traced`
//! fixture sends each interval's profiles to a receiver that decodes them
//! with the official generated types (`opentelemetry-proto`, feature
//! `profiles`), and the samples' links are checked against the spans the
//! same run exported.
//!
//! `cargo test --release -p smolder-examples --features otlp-profiles --test e2e -- otlp_profiles`

use std::collections::HashSet;
use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::profiles::v1development::ExportProfilesServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;

use crate::http1;
use crate::receiver::Receiver;
use crate::spans::Traced;

/// Accepts `POST /v1development/profiles` with a protobuf body that
/// decodes as an `ExportProfilesServiceRequest`; anything else is refused
/// and counted.
struct ProfilesReceiver {
    addr: std::net::SocketAddr,
    requests: Arc<Mutex<Vec<ExportProfilesServiceRequest>>>,
    rejections: Arc<Mutex<Vec<String>>>,
}

impl ProfilesReceiver {
    fn start() -> ProfilesReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let rejections = Arc::new(Mutex::new(Vec::new()));
        {
            let (requests, rejections) = (requests.clone(), rejections.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming().map_while(Result::ok) {
                    let (requests, rejections) = (requests.clone(), rejections.clone());
                    std::thread::spawn(move || serve(stream, &requests, &rejections));
                }
            });
        }
        ProfilesReceiver {
            addr,
            requests,
            rejections,
        }
    }
}

fn serve(
    stream: TcpStream,
    requests: &Mutex<Vec<ExportProfilesServiceRequest>>,
    rejections: &Mutex<Vec<String>>,
) {
    let mut reader = BufReader::new(stream);
    loop {
        let head = match http1::read_head(&mut reader) {
            Ok(Some(head)) => head,
            Err(http1::HeadError::Timeout) => continue,
            _ => return,
        };
        let Ok(body) = head.read_body(&mut reader) else {
            return;
        };
        let refused = if head.target != "/v1development/profiles" {
            Some(("404 Not Found", format!("no route for {}", head.target)))
        } else if head.method != "POST" {
            Some(("405 Method Not Allowed", head.method.clone()))
        } else if head.header("content-type") != Some("application/x-protobuf") {
            Some((
                "415 Unsupported Media Type",
                format!("{:?}", head.header("content-type")),
            ))
        } else {
            match ExportProfilesServiceRequest::decode(body.as_slice()) {
                Ok(request) => {
                    requests.lock().unwrap().push(request);
                    None
                }
                Err(e) => Some(("400 Bad Request", e.to_string())),
            }
        };
        let writer = reader.get_mut();
        match refused {
            Some((status, reason)) => {
                rejections.lock().unwrap().push(reason.clone());
                let _ = write!(
                    writer,
                    "HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{reason}",
                    reason.len()
                );
                return;
            }
            None => {
                let _ = write!(
                    writer,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n"
                );
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn otlp_profiles_link_samples_to_the_spans_exported() {
    let profiles = ProfilesReceiver::start();
    let spans = Receiver::start();
    let mut traced = Traced::start(
        &["steady"],
        &[
            (
                "OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT",
                &format!("http://{}/v1development/profiles", profiles.addr),
            ),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                &format!("{}/v1/traces", spans.endpoint()),
            ),
            ("OTEL_RESOURCE_ATTRIBUTES", "service.version=1.2.3"),
            ("SMOLDER_PUSH_INTERVAL", "2s"),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while profiles.requests.lock().unwrap().len() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(traced.rounds() > 0);
    let requests = profiles.requests.lock().unwrap().clone();
    drop(traced.finish());
    assert!(requests.len() >= 3, "three intervals: {}", requests.len());
    assert!(profiles.rejections.lock().unwrap().is_empty());
    let exported = spans.wait_for(Duration::from_secs(20), |s| !s.is_empty());
    let heavy: HashSet<(String, String)> = exported
        .iter()
        .filter(|s| s.name() == "cpu_heavy")
        .map(|s| (s.trace_id(), s.span_id()))
        .collect();

    let mut linked = 0;
    let mut in_spans = 0;
    for request in &requests {
        let dictionary = request.dictionary.as_ref().expect("a dictionary");
        let string = |i: i32| dictionary.string_table[i as usize].as_str();
        let resource = request.resource_profiles[0].resource.as_ref().unwrap();
        let attribute = |key: &str| {
            resource
                .attributes
                .iter()
                .find(|kv| kv.key == key)
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
        };
        assert_eq!(attribute("service.name").as_deref(), Some("traced"));
        assert_eq!(attribute("service.version").as_deref(), Some("1.2.3"));
        let profiles = &request.resource_profiles[0].scope_profiles[0].profiles;
        let cpu = profiles
            .iter()
            .find(|p| {
                p.sample_type
                    .is_some_and(|t| string(t.type_strindex) == "cpu")
            })
            .expect("a cpu/nanoseconds profile");
        assert_eq!(
            string(cpu.sample_type.unwrap().unit_strindex),
            "nanoseconds"
        );
        assert_eq!(cpu.duration_nano, 2_000_000_000);
        for sample in &cpu.samples {
            assert_eq!(sample.values.len(), 1, "one sample type per profile");
            if sample.link_index == 0 {
                continue;
            }
            in_spans += 1;
            let link = &dictionary.link_table[sample.link_index as usize];
            if heavy.contains(&(hex(&link.trace_id), hex(&link.span_id))) {
                linked += 1;
            }
        }
    }
    assert!(in_spans >= 3, "samples linked to spans: {in_spans}");
    // The innermost span: the CPU is all in `cpu_heavy`. The last spans of
    // the run may not have been exported when the fixture stopped.
    assert!(
        linked * 2 > in_spans,
        "{linked} of {in_spans} samples link to an exported cpu_heavy span"
    );
}

//! Settings from the builder and from `SMOLDER_*` variables: values out of
//! range are refused with an error that names the setting or variable.

use std::time::Duration;

use smolder::{Agent, AgentBuilder, Error, Unwinder};

use crate::burn::assert_sampling;
use crate::{EnvGuard, TEST_HZ, quiet_builder, serial};

/// One builder setting, applied.
type Configure = fn(AgentBuilder) -> AgentBuilder;

#[test]
fn builder_values_out_of_range_name_the_setting() {
    let _serial = serial();
    let cases: [(&str, Configure); 10] = [
        ("frequency_hz", |b| b.frequency_hz(0)),
        ("frequency_hz", |b| b.frequency_hz(10_001)),
        ("max_depth", |b| b.max_depth(4)),
        ("buffer_records", |b| b.buffer_records(1)),
        ("stack_table_capacity", |b| b.stack_table_capacity(10)),
        ("history", |b| b.history(Duration::from_secs(1))),
        ("history_resolution", |b| {
            b.history_resolution(Duration::ZERO)
        }),
        ("history_bytes", |b| b.history_bytes(1)),
        ("http_max_seconds", |b| b.http_max_seconds(0)),
        ("http_max_connections", |b| b.http_max_connections(0)),
    ];
    for (expected, configure) in cases {
        match configure(quiet_builder()).start() {
            Err(error @ Error::InvalidSetting { setting, .. }) => {
                assert_eq!(setting, expected, "{error}");
                assert!(error.to_string().contains(expected), "{error}");
            }
            other => panic!("{expected}: expected InvalidSetting, got {other:?}"),
        }
    }
}

#[test]
fn bad_environment_values_name_the_variable() {
    let serial = serial();
    let cases = [
        ("SMOLDER_FREQUENCY_HZ", "0"),
        ("SMOLDER_FREQUENCY_HZ", "fast"),
        ("SMOLDER_MAX_DEPTH", "2000"),
        ("SMOLDER_UNWINDER", "guesswork"),
        ("SMOLDER_ENGINE", "quantum"),
        ("SMOLDER_ENABLED", "maybe"),
        ("SMOLDER_BUFFER_RECORDS", "-1"),
        ("SMOLDER_STACK_TABLE_CAPACITY", "lots"),
        ("SMOLDER_HISTORY", "15"),
        ("SMOLDER_HTTP_ADDR", "localhost"),
    ];
    for (var, value) in cases {
        let _env = EnvGuard::set(&serial, &[(var, value)]);
        let error = smolder::start().expect_err(&format!("{var}={value} must be refused"));
        let message = error.to_string();
        let Error::InvalidEnvironment {
            var: named,
            value: found,
            ..
        } = error
        else {
            panic!("{var}={value}: expected InvalidEnvironment, got {error:?}");
        };
        assert_eq!((named, found.as_str()), (var, value), "{message}");
        assert!(
            message.contains(var) && message.contains(value),
            "{message}"
        );
    }
}

#[test]
fn environment_configures_start_and_the_builder_overrides_it() {
    let serial = serial();
    let env = EnvGuard::set(
        &serial,
        &[
            ("SMOLDER_FREQUENCY_HZ", "251"),
            ("SMOLDER_HTTP_ADDR", "off"),
            ("SMOLDER_UNWINDER", "frame-pointers"),
        ],
    );
    let agent = smolder::start().expect("start from the environment");
    let stats = agent.stats();
    assert_eq!(stats.frequency_hz, 251);
    assert_eq!(stats.unwinder, Unwinder::FramePointers);
    assert_eq!(agent.http_addr(), None);
    drop(agent);

    // A value given to the builder wins over the variable, even a bad one.
    let bad = EnvGuard::set(&serial, &[("SMOLDER_FREQUENCY_HZ", "0")]);
    let agent = quiet_builder().start().expect("explicit values win");
    let stats = agent.stats();
    assert_eq!(stats.frequency_hz, TEST_HZ);
    assert_eq!(stats.unwinder, Unwinder::FramePointers);
    assert_sampling(&agent);
    // Stopped before the variables change back: the agent's threads must
    // not be running while the environment changes.
    drop(agent);
    drop(bad);
    drop(env);
}

#[test]
fn an_endpoint_that_cannot_listen_fails_start_unless_optional() {
    let _serial = serial();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let addr = taken.local_addr().expect("its address");
    match quiet_builder().http_addr(addr).start() {
        Err(error @ Error::HttpBind { .. }) => {
            assert!(error.to_string().contains(&addr.to_string()), "{error}");
        }
        other => panic!("binding a taken port must fail start, got {other:?}"),
    }
    // The failed start undid itself: an agent starts now, without the
    // endpoint when it is optional.
    let agent = quiet_builder()
        .http_addr(addr)
        .http_required(false)
        .start()
        .expect("start with an optional endpoint");
    assert_eq!(agent.http_addr(), None);
    assert_sampling(&agent);
    drop(agent);

    let open = Agent::builder()
        .http_addr("0.0.0.0:0".parse().unwrap())
        .start();
    assert!(
        matches!(open, Err(Error::HttpUnauthenticated { .. })),
        "serving beyond loopback without a token is refused: {open:?}"
    );
}

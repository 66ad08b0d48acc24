//! Starting, stopping, restarting, and what may not start beside a running
//! agent.

use smolder::{Agent, Error};

use crate::burn::{assert_samples_the_burner, assert_sampling};
use crate::{EnvGuard, quiet_builder, serial};

/// The current `SIGPROF` disposition.
fn sigprof_action() -> libc::sigaction {
    // SAFETY: all-zero is a valid sigaction to write into; querying with a
    // null new action changes nothing.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        assert_eq!(
            libc::sigaction(libc::SIGPROF, std::ptr::null(), &mut action),
            0
        );
        action
    }
}

#[test]
fn start_samples_and_drop_stops() {
    let _serial = serial();
    let agent = quiet_builder().start().expect("start");
    assert!(agent.is_enabled());
    assert_eq!(agent.http_addr(), None, "the endpoint was disabled");
    let handler = sigprof_action().sa_sigaction;
    assert!(
        handler != libc::SIG_DFL && handler != libc::SIG_IGN,
        "a running agent has a SIGPROF handler installed"
    );
    assert_samples_the_burner(&agent);
    drop(agent);
    // A timer signal still in flight must not kill the process: stopping
    // leaves SIGPROF ignored, not at its default (terminate) action.
    assert_eq!(sigprof_action().sa_sigaction, libc::SIG_IGN);
}

#[test]
fn an_agent_can_start_again_after_the_last_one_stopped() {
    let _serial = serial();
    for round in 0..3 {
        let agent = quiet_builder()
            .start()
            .unwrap_or_else(|e| panic!("start #{round}: {e}"));
        if round == 2 {
            assert_samples_the_burner(&agent);
        } else {
            assert_sampling(&agent);
        }
    }
}

#[test]
fn a_second_agent_is_refused_and_the_first_keeps_working() {
    let _serial = serial();
    let first = quiet_builder().start().expect("start");
    for attempt in [quiet_builder(), Agent::builder().http_disabled()] {
        match attempt.start() {
            Err(Error::AlreadyRunning) => {}
            other => panic!("a second agent must be refused, got {other:?}"),
        }
    }
    assert!(first.is_enabled());
    assert_sampling(&first);
    drop(first);
    let third = quiet_builder()
        .start()
        .expect("start once the first has stopped");
    assert_sampling(&third);
}

#[test]
fn smolder_enabled_false_gives_an_agent_that_records_nothing() {
    let serial = serial();
    {
        let env = EnvGuard::set(&serial, &[("SMOLDER_ENABLED", "false")]);
        // The operator's switch wins over the builder.
        let from_builder = quiet_builder()
            .enabled(true)
            .http_addr("127.0.0.1:0".parse().unwrap())
            .start()
            .expect("a disabled agent starts");
        let from_start = smolder::start().expect("a disabled agent starts");
        drop(env);
        for agent in [&from_builder, &from_start] {
            assert!(!agent.is_enabled());
            assert_eq!(agent.http_addr(), None, "a disabled agent serves nothing");
            assert!(matches!(
                agent.record(std::time::Duration::from_millis(10)),
                Err(Error::Disabled)
            ));
            let stats = agent.stats();
            assert_eq!(stats.engine, None);
            assert_eq!((stats.samples, stats.signals), (0, 0));
        }
        // It installs nothing, so a real agent may run beside it.
        let real = quiet_builder()
            .start()
            .expect("start beside a disabled agent");
        assert_sampling(&real);
    }
    let off = quiet_builder().enabled(false).start().expect("start");
    assert!(!off.is_enabled());
    assert!(matches!(
        off.record(std::time::Duration::from_millis(10)),
        Err(Error::Disabled)
    ));
}

extern "C" fn foreign_handler(_signal: libc::c_int) {}

#[test]
fn another_sigprof_handler_is_left_in_place() {
    let _serial = serial();
    // SAFETY: all-zero is a valid sigaction; the handler has the plain
    // (non-SA_SIGINFO) signature, and the previous action is restored below.
    let previous = unsafe {
        let mut foreign: libc::sigaction = std::mem::zeroed();
        foreign.sa_sigaction = foreign_handler as *const () as libc::sighandler_t;
        libc::sigemptyset(&mut foreign.sa_mask);
        let mut previous: libc::sigaction = std::mem::zeroed();
        assert_eq!(libc::sigaction(libc::SIGPROF, &foreign, &mut previous), 0);
        previous
    };
    let refused = quiet_builder().start();
    let still_installed = sigprof_action().sa_sigaction;
    // SAFETY: puts back the action displaced above.
    unsafe { libc::sigaction(libc::SIGPROF, &previous, std::ptr::null_mut()) };
    match refused {
        Err(error @ Error::ForeignSignalHandler) => {
            assert!(error.to_string().contains("SIGPROF"), "{error}");
        }
        other => panic!("start must refuse a foreign SIGPROF handler, got {other:?}"),
    }
    assert_eq!(
        still_installed, foreign_handler as *const () as libc::sighandler_t,
        "the foreign handler stays installed"
    );
    let agent = quiet_builder()
        .start()
        .expect("start once the foreign handler is gone");
    assert_sampling(&agent);
}

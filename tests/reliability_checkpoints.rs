//! Each hostile checkpoint of the corpus is refused in-process with an error naming the
//! limit or rule it breaks (tests/hostile_inputs.rs checks the binaries' exit statuses).

use mpm::io::{load_pth, load_state_dict, StateDictPick};
use std::path::{Path, PathBuf};

fn item(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hostile")
        .join(name)
}

#[test]
fn each_attack_is_refused_by_name() {
    for (name, want) in [
        ("deep_rebuild_chain.pth", "nesting depth limit"),
        ("deep_lists.pth", "nesting depth limit"),
        ("memo_flood.pth", "memo size limit"),
        ("pickle_bomb.pth", "pickle size limit"),
        ("broadcast_bomb.pth", "materialised size limit"),
        ("storage_bomb.pth", "decompression ratio limit"),
        ("huge_numel.pth", "expected"),
        ("view_out_of_bounds.pth", "too short"),
        ("evil_system.pth", "refusing global 'posix.system'"),
        ("evil_exec.pth", "refusing global 'builtins.exec'"),
        (
            "evil_in_state_dict.pth",
            "refusing global 'subprocess.Popen'",
        ),
        ("evil_legacy.pth", "refusing global 'posix.system'"),
    ] {
        for (how, r) in [
            (
                "load_state_dict",
                load_state_dict(&item(name), StateDictPick::Auto).map(|_| ()),
            ),
            ("load_pth", load_pth(&item(name)).map(|_| ())),
        ] {
            let e = r.expect_err(name).to_string();
            assert!(e.contains(want), "{how}({name}): {e}");
            assert!(e.contains(name), "{how}({name}) names the file: {e}");
        }
    }
}

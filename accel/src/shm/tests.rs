use std::io::Write;
use std::time::Duration;

use super::*;

fn policy(dir: &std::path::Path) -> Policy {
    Policy {
        allowed: true,
        dir: dir.into(),
        uids: Vec::new(),
        max_regions: 8,
    }
}

fn object(dir: &std::path::Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(bytes).unwrap();
    path
}

fn at(region: &str, offset: u64, byte_size: u64) -> TensorRef {
    TensorRef {
        region: region.into(),
        offset,
        byte_size,
    }
}

#[test]
fn keys_name_one_regular_file_of_ours_in_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let shm = SharedMemory::new(policy(dir.path()));
    object(dir.path(), "ok", &[0; 64]);
    std::os::unix::fs::symlink(dir.path().join("ok"), dir.path().join("link")).unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    object(&dir.path().join("sub"), "inner", &[0; 64]);
    let outside = tempfile::NamedTempFile::new().unwrap();
    let outside_rel = format!("../{}", outside.path().file_name().unwrap().to_string_lossy());
    let cases: Vec<(&str, Code, &str)> = vec![
        ("/", Code::InvalidArgument, "names no file"),
        ("///", Code::InvalidArgument, "names no file"),
        ("..", Code::InvalidArgument, "one file"),
        ("/sub/inner", Code::InvalidArgument, "one file"),
        (&outside_rel, Code::InvalidArgument, "one file"),
        ("/triton_python_backend_shm_region_x", Code::InvalidArgument, "reserved"),
        ("/link", Code::InvalidArgument, "symbolic link"),
        ("/sub", Code::InvalidArgument, "not a regular file"),
        ("/missing", Code::InvalidArgument, "Unable to open"),
    ];
    for (key, code, needle) in cases {
        let e = shm.register("r", key, 0, 16).unwrap_err();
        assert_eq!(e.code(), code, "{key}: {e}");
        assert!(e.to_string().contains(needle), "{key}: {e}");
    }
    // A leading slash is dropped, as shm_open does: tritonclient's "/ok" is the file "ok".
    shm.register("r", "/ok", 0, 16).unwrap();
    assert_eq!(shm.register("r", "/ok", 0, 16).unwrap_err().code(), Code::AlreadyExists);
    let e = shm.register("big", "ok", 60, 8).unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.to_string().contains("beyond the object's 64 bytes"), "{e}");
    assert_eq!(
        shm.register("wrap", "ok", u64::MAX, 2).unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(shm.register("", "ok", 0, 1).unwrap_err(), ShmError::NoName);
    assert_eq!(
        shm.register("zero", "ok", 0, 0).unwrap_err().code(),
        Code::InvalidArgument
    );
}

#[test]
fn another_users_object_is_refused_unless_allowed() {
    // SAFETY: geteuid touches no memory.
    #[allow(unsafe_code)]
    if unsafe { libc::geteuid() } != 0 {
        return; // only root can give a file away
    }
    let dir = tempfile::tempdir().unwrap();
    let path = object(dir.path(), "theirs", &[0; 16]);
    std::os::unix::fs::chown(&path, Some(12345), None).unwrap();
    let shm = SharedMemory::new(policy(dir.path()));
    let e = shm.register("r", "/theirs", 0, 16).unwrap_err();
    assert!(e.to_string().contains("owned by uid 12345"), "{e}");
    let mut p = policy(dir.path());
    p.uids = vec![12345];
    SharedMemory::new(p).register("r", "/theirs", 0, 16).unwrap();
}

#[test]
fn disabled_and_full() {
    let dir = tempfile::tempdir().unwrap();
    object(dir.path(), "a", &[0; 16]);
    let off = SharedMemory::disabled();
    assert_eq!(off.register("r", "a", 0, 16).unwrap_err(), ShmError::Disabled);
    assert_eq!(ShmError::Disabled.code(), Code::Unimplemented);
    assert!(off.status("").unwrap().is_empty());
    let mut p = policy(dir.path());
    p.max_regions = 1;
    let shm = SharedMemory::new(p);
    shm.register("one", "a", 0, 16).unwrap();
    assert_eq!(
        shm.register("two", "a", 0, 16).unwrap_err().code(),
        Code::ResourceExhausted
    );
}

#[test]
fn inputs_are_the_regions_bytes_and_outputs_land_in_them() {
    let dir = tempfile::tempdir().unwrap();
    let bytes: Vec<u8> = (0..=255).collect();
    let path = object(dir.path(), "obj", &bytes);
    let shm = SharedMemory::new(policy(dir.path()));
    // A register offset that is not page-aligned works (Triton needs page alignment).
    shm.register("in", "obj", 100, 100).unwrap();
    shm.register("out", "obj", 200, 56).unwrap();
    let mut bound = Bound::default();
    let data = shm.bind_input(&at("in", 10, 20), &mut bound).unwrap();
    assert_eq!(&data[..], &bytes[110..130]);
    // The client's later writes are what the server reads: no copy was taken.
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    std::os::unix::fs::FileExt::write_at(&f, &[7, 7], 110).unwrap();
    assert_eq!(&data[..2], &[7, 7]);

    shm.bind_output("y", &at("out", 8, 16), &mut bound).unwrap();
    let slot = bound.output("y").unwrap();
    slot.write("y", &[9; 16]).unwrap();
    let after = std::fs::read(&path).unwrap();
    assert_eq!(&after[208..224], &[9; 16]);
    assert_eq!(after[207], 207);
    let e = slot.write("y", &[1; 17]).unwrap_err();
    assert_eq!(e.code(), Code::Internal);
    assert!(e.to_string().contains("should be at least 17 bytes"), "{e}");
    bound.check_inputs().unwrap();

    // Triton's bounds rules at use.
    let mut b = Bound::default();
    let cases = [
        (at("nope", 0, 1), Code::NotFound, "Unable to find"),
        (at("in", 100, 1), Code::InvalidArgument, "Invalid offset for"),
        (at("in", 90, 11), Code::InvalidArgument, "Invalid offset + byte size"),
        (at("in", 1, u64::MAX), Code::InvalidArgument, "overflow"),
    ];
    for (r, code, needle) in cases {
        let e = shm.bind_input(&r, &mut b).unwrap_err();
        assert_eq!(e.code(), code, "{r:?}: {e}");
        assert!(e.to_string().contains(needle), "{r:?}: {e}");
    }
    let status = shm.status("").unwrap();
    assert_eq!(status.len(), 2);
    assert_eq!(
        status[0],
        RegionStatus {
            name: "in".into(),
            key: "obj".into(),
            offset: 100,
            byte_size: 100
        }
    );
    assert_eq!(shm.status("zzz").unwrap_err().code(), Code::NotFound);
}

#[test]
fn a_truncated_region_faults_into_zeros_and_an_error_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let page = guard::page_size();
    let path = object(dir.path(), "obj", &vec![5u8; 4 * page]);
    let shm = SharedMemory::new(policy(dir.path()));
    shm.register("r", "obj", 0, 4 * page as u64).unwrap();
    let mut bound = Bound::default();
    let data = shm.bind_input(&at("r", 0, 4 * page as u64), &mut bound).unwrap();
    assert_eq!(data[3 * page], 5);
    // The owner truncates its object under a request that has already bound it.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(page as u64)
        .unwrap();
    // Reading past the new end would be SIGBUS; it reads zeros instead, and the request knows.
    let sum: u64 = data.iter().map(|&b| u64::from(b)).sum();
    assert_eq!(sum, 5 * page as u64);
    let e = bound.check_inputs().unwrap_err();
    assert_eq!(e.code(), Code::Internal);
    assert!(e.to_string().contains("truncated by its owner while in use"), "{e}");
    // Later requests are refused before touching it.
    let e = shm.bind_input(&at("r", 0, 8), &mut Bound::default()).unwrap_err();
    assert_eq!(e.code(), Code::Internal);

    // A truncation seen before use is a clean INVALID_ARGUMENT.
    let path2 = object(dir.path(), "obj2", &[1; 64]);
    shm.register("r2", "obj2", 0, 64).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path2)
        .unwrap()
        .set_len(10)
        .unwrap();
    let e = shm.bind_input(&at("r2", 0, 64), &mut Bound::default()).unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.to_string().contains("truncated to 10 bytes"), "{e}");
}

#[test]
fn parameters_follow_tritons_rules() {
    let p = |v: Vec<(&str, ParamValue)>| -> Parameters { v.into_iter().map(|(k, v)| (k.to_string(), v)).collect() };
    assert_eq!(tensor_ref("x", &p(vec![])).unwrap(), None);
    let r = tensor_ref(
        "x",
        &p(vec![
            (REGION, ParamValue::String("a".into())),
            (BYTE_SIZE, ParamValue::Int(16)),
            (OFFSET, ParamValue::Uint(4)),
        ]),
    )
    .unwrap();
    assert_eq!(r, Some(at("a", 4, 16)));
    let bad = [
        p(vec![(REGION, ParamValue::String("a".into()))]),
        p(vec![(BYTE_SIZE, ParamValue::Int(16))]),
        p(vec![(REGION, ParamValue::Int(1)), (BYTE_SIZE, ParamValue::Int(16))]),
        p(vec![
            (REGION, ParamValue::String("a".into())),
            (BYTE_SIZE, ParamValue::Int(-1)),
        ]),
    ];
    for params in bad {
        assert_eq!(
            tensor_ref("x", &params).unwrap_err().code(),
            Code::InvalidArgument,
            "{params:?}"
        );
    }
}

#[tokio::test]
async fn unregister_waits_for_the_requests_using_a_region() {
    let dir = tempfile::tempdir().unwrap();
    object(dir.path(), "obj", &[3; 64]);
    let shm = Arc::new(SharedMemory::new(policy(dir.path())));
    shm.register("r", "obj", 0, 64).unwrap();
    let mut bound = Bound::default();
    let data = shm.bind_input(&at("r", 0, 64), &mut bound).unwrap();
    let unregistering = tokio::spawn({
        let shm = shm.clone();
        async move { shm.unregister("").await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !unregistering.is_finished(),
        "unregister returned while a request used the region"
    );
    // Still listed, but no longer usable.
    assert_eq!(shm.status("r").unwrap().len(), 1);
    assert_eq!(
        shm.bind_input(&at("r", 0, 1), &mut Bound::default())
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(data[0], 3);
    drop(data);
    drop(bound);
    tokio::time::timeout(Duration::from_secs(5), unregistering)
        .await
        .expect("unregister finishes once the request is done")
        .unwrap()
        .unwrap();
    assert!(shm.status("").unwrap().is_empty());
    // Unknown names are not an error.
    shm.unregister("never").await.unwrap();
}

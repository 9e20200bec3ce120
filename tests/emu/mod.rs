//! The engine's CUDA kernels run on the host (`cuda_emu.h`), for tests that compare them with
//! the CPU backend without a GPU. A kernel file is compiled once per test process by the
//! system C++ compiler (`CXX`, else `c++`) into a shared library, with a trampoline per
//! `extern "C" __global__` kernel that unpacks the argument slots `cuda::launch::Args` builds
//! for `cuLaunchKernel`. Launch shapes are the caller's, as in `src/cuda/ops.rs`.
//!
//! Without a C++ compiler the tests print why and return, unless `MPM_REQUIRE_CXX` is set (CI
//! sets it), in which case they fail.

#![allow(dead_code)]

use mpm::cuda::launch::Args;
use std::collections::HashMap;
use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

/// One kernel file, compiled for the emulator.
pub struct Kernels {
    file: String,
    lib: libloading::Library,
    kernels: HashMap<String, Option<String>>,
}

type LaunchFn = unsafe extern "C" fn(
    *const std::ffi::c_char,
    unsafe extern "C" fn(*mut *mut c_void),
    *mut *mut c_void,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    *mut u8,
    usize,
) -> i32;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The compiled kernels of `kernels/<file>`, or None (with the reason printed) when there is
/// no C++ compiler and `MPM_REQUIRE_CXX` is unset.
pub fn kernels(file: &str) -> Option<Arc<Kernels>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<Kernels>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(k) = c.get(file) {
        return Some(k.clone());
    }
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let missing = if !cfg!(target_arch = "x86_64") {
        // cuda_emu.h switches fibers with x86-64 assembly.
        Some("the kernel emulator runs on x86-64 only".to_string())
    } else if Command::new(&cxx).arg("--version").output().is_err() {
        Some(format!("no C++ compiler ('{cxx}') for the kernel emulator"))
    } else {
        None
    };
    if let Some(why) = missing {
        if std::env::var_os("MPM_REQUIRE_CXX").is_some() {
            panic!("{why}, and MPM_REQUIRE_CXX is set");
        }
        println!("skipped: {why}");
        return None;
    }
    let k = Arc::new(build(&cxx, file));
    c.insert(file.to_string(), k.clone());
    Some(k)
}

/// `extern "C" __global__` kernels of a source: name -> its `__cluster_dims__` x (if any),
/// and the C++ trampolines that call them from an argument-pointer array.
fn trampolines(src: &str) -> (HashMap<String, Option<String>>, String) {
    let mut out = String::new();
    let mut names = HashMap::new();
    let key = "extern \"C\" __global__ void";
    let mut rest = src;
    while let Some(i) = rest.find(key) {
        rest = &rest[i + key.len()..];
        // Attributes with parenthesised arguments, then the name, then the parameter list.
        let mut cluster = None;
        let mut s = rest.trim_start();
        let name;
        loop {
            let end = s
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .expect("kernel signature");
            let word = &s[..end];
            let (args, after) = balanced(&s[end..]);
            match word {
                "__cluster_dims__" => {
                    cluster = Some(args.split(',').next().unwrap_or("1").trim().to_string())
                }
                "__launch_bounds__" => {}
                w => {
                    name = w.to_string();
                    let params: Vec<String> = split_top(&args)
                        .into_iter()
                        .map(|p| param_type(&p))
                        .collect();
                    let call: Vec<String> = params
                        .iter()
                        .enumerate()
                        .map(|(k, t)| format!("*({t}*)p[{k}]"))
                        .collect();
                    out += &format!(
                        "extern \"C\" EMU_EXPORT void emu_tramp_{w}(void** p) {{ {w}({}); }}\n",
                        call.join(", ")
                    );
                    out += &format!(
                        "extern \"C\" EMU_EXPORT unsigned emu_cluster_{w}() {{ return {}; }}\n",
                        cluster.clone().unwrap_or_else(|| "1".into())
                    );
                    rest = after;
                    break;
                }
            }
            s = after.trim_start();
        }
        names.insert(name, cluster);
    }
    (names, out)
}

/// `(inner, rest)` for a string starting with a parenthesised group.
fn balanced(s: &str) -> (String, &str) {
    let s = s.trim_start();
    assert!(
        s.starts_with('('),
        "expected '(' in a kernel signature at {s:.40}"
    );
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return (s[1..i].to_string(), &s[i + 1..]);
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced kernel signature");
}

fn split_top(s: &str) -> Vec<String> {
    let (mut out, mut cur, mut depth) = (Vec::new(), String::new(), 0);
    for c in s.chars() {
        match c {
            '(' | '<' => depth += 1,
            ')' | '>' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(cur);
    }
    out
}

/// The type of one parameter declaration (`const float* __restrict__ x` -> `const float*`).
fn param_type(p: &str) -> String {
    let p = p.replace("__restrict__", " ");
    let p = p.trim();
    let end = p
        .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
        .expect("parameter with a type");
    p[..=end].trim().to_string()
}

fn build(cxx: &str, file: &str) -> Kernels {
    let dir = repo();
    let src = std::fs::read_to_string(dir.join("kernels").join(file))
        .unwrap_or_else(|e| panic!("kernels/{file}: {e}"));
    // Dynamic shared memory: one buffer per block, sized by the launch.
    let mut body = String::new();
    for line in src.lines() {
        let t = line.trim_start();
        if let Some(decl) = t.strip_prefix("extern __shared__ ") {
            let (ty, name) = decl.split_once(' ').expect("extern __shared__ T name[];");
            let name = name.split('[').next().unwrap_or(name).trim();
            body += &format!("    {ty}* {name} = ({ty}*)emu::dyn_smem();\n");
        } else {
            body += line;
            body.push('\n');
        }
    }
    let (names, tramps) = trampolines(&src);
    let header = std::fs::read_to_string(dir.join("tests/emu/cuda_emu.h")).expect("cuda_emu.h");
    let common = std::fs::read_to_string(dir.join("kernels/common.cuh")).expect("common.cuh");
    let unit = format!("#include \"cuda_emu.h\"\n#line 1 \"{file}\"\n{body}\n{tramps}");
    let hash = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&unit, &header, &common, cxx).hash(&mut h);
        h.finish()
    };
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kernel-emu");
    std::fs::create_dir_all(&out).expect("emulator build folder");
    let stem = file.trim_end_matches(".cu");
    let lib = out.join(format!("{stem}-{hash:016x}.so"));
    if !lib.exists() {
        let cpp = out.join(format!("{stem}-{hash:016x}.cpp"));
        std::fs::write(&cpp, &unit).expect("write emulator source");
        let tmp = out.join(format!("{stem}-{hash:016x}.{}.so", std::process::id()));
        let r = Command::new(cxx)
            .args([
                "-std=c++20",
                "-O2",
                "-g",
                "-fPIC",
                "-shared",
                // Nothing but the entry points leaves the library (see cuda_emu.h).
                "-fvisibility=hidden",
                "-fno-gnu-unique",
                "-pthread",
                "-ffp-contract=off",
                "-fno-strict-aliasing",
                "-Wno-unknown-pragmas",
            ])
            .arg("-I")
            .arg(dir.join("kernels"))
            .arg("-I")
            .arg(dir.join("tests/emu"))
            .arg("-o")
            .arg(&tmp)
            .arg(&cpp)
            .output()
            .expect("run the C++ compiler");
        assert!(
            r.status.success(),
            "compiling kernels/{file} for the host emulator failed:\n{}",
            String::from_utf8_lossy(&r.stderr)
        );
        std::fs::rename(&tmp, &lib).expect("move the emulator library into place");
    }
    // SAFETY: the library is the one just built from our sources; its initialisers only set up
    // thread-local state.
    let lib = unsafe { libloading::Library::new(&lib) }
        .unwrap_or_else(|e| panic!("loading {}: {e}", lib.display()));
    Kernels {
        file: file.to_string(),
        lib,
        kernels: names,
    }
}

impl Kernels {
    /// Runs kernel `name` on host memory as `<<<grid, block, dyn_smem>>>` (pointers in `args`
    /// are host addresses), with the cluster size of its `__cluster_dims__`.
    pub fn launch(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        block: u32,
        dyn_smem: u32,
        mut args: Args,
    ) -> Result<(), String> {
        if !self.kernels.contains_key(name) {
            return Err(format!("no kernel {name} in kernels/{}", self.file));
        }
        // SAFETY: the symbols are the trampolines generated for this library, with the
        // signatures declared here; `args` holds the kernel's parameters in order and types.
        unsafe {
            let tramp: libloading::Symbol<unsafe extern "C" fn(*mut *mut c_void)> = self
                .lib
                .get(format!("emu_tramp_{name}\0").as_bytes())
                .map_err(|e| e.to_string())?;
            let cluster: libloading::Symbol<unsafe extern "C" fn() -> u32> = self
                .lib
                .get(format!("emu_cluster_{name}\0").as_bytes())
                .map_err(|e| e.to_string())?;
            let launch: libloading::Symbol<LaunchFn> =
                self.lib.get(b"emu_launch\0").map_err(|e| e.to_string())?;
            let mut ptrs = args.ptrs();
            let mut err = vec![0u8; 1024];
            let cname = std::ffi::CString::new(name).map_err(|e| e.to_string())?;
            let rc = launch(
                cname.as_ptr(),
                *tramp,
                ptrs.as_mut_ptr(),
                grid.0,
                grid.1,
                grid.2,
                block,
                1,
                1,
                cluster(),
                dyn_smem,
                err.as_mut_ptr(),
                err.len(),
            );
            if rc != 0 {
                let end = err.iter().position(|&b| b == 0).unwrap_or(err.len());
                return Err(format!("{name}: {}", String::from_utf8_lossy(&err[..end])));
            }
        }
        Ok(())
    }
}

/// A host buffer standing in for a device allocation. Its end lies against an inaccessible
/// page (rounded up to 16 bytes, the widest access), so a kernel reading or writing past it
/// stops the test process with the emulator's message; guard words before its start must be
/// intact after a launch (a kernel writing below its buffer fails the test).
pub struct Buf<T: Copy> {
    map: *mut u8,
    map_len: usize,
    start: *mut T,
    len: usize,
    guard: T,
}

/// Guard words before a buffer.
const LEAD: usize = 64;

impl<T: Copy + PartialEq + std::fmt::Debug> Buf<T> {
    pub fn new(v: &[T], guard: T) -> Self {
        let page = 4096usize;
        let size = std::mem::size_of::<T>();
        let bytes = std::mem::size_of_val(v).div_ceil(16) * 16;
        let body = bytes + LEAD * size;
        let data_pages = body.div_ceil(page).max(1);
        let map_len = (data_pages + 2) * page;
        // SAFETY: an anonymous private mapping, then the first and last pages made
        // inaccessible; the data lies in between and is only reached through `start`/`len`.
        let map = unsafe {
            let m = libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert!(m != libc::MAP_FAILED, "mmap of a test buffer failed");
            let m = m as *mut u8;
            libc::mprotect(m as *mut libc::c_void, page, libc::PROT_NONE);
            libc::mprotect(
                m.add(map_len - page) as *mut libc::c_void,
                page,
                libc::PROT_NONE,
            );
            m
        };
        let end = map_len - page;
        let start_byte = end - bytes;
        // SAFETY: `start_byte - LEAD * size` .. `end` lies in the accessible pages (the body
        // was sized for it), 16-byte aligned at `start_byte` (page-aligned end minus a multiple
        // of 16), and `v.len()` elements fit before `end`.
        let start = unsafe {
            let start = map.add(start_byte) as *mut T;
            for k in 1..=LEAD {
                start.sub(k).write(guard);
            }
            std::ptr::copy_nonoverlapping(v.as_ptr(), start, v.len());
            start
        };
        Buf {
            map,
            map_len,
            start,
            len: v.len(),
            guard,
        }
    }
    /// A buffer of `len` copies of `fill` (e.g. NaN for an output the kernel must write).
    pub fn filled(len: usize, fill: T, guard: T) -> Self {
        Self::new(&vec![fill; len], guard)
    }
    /// The address a kernel sees (as the u64 a device pointer is).
    pub fn ptr(&mut self) -> u64 {
        self.start as u64
    }
    /// The contents, after checking the guard words below the buffer.
    pub fn get(&self, what: &str) -> &[T] {
        // SAFETY: the LEAD words below `start` and the `len` from it were written in `new`
        // and stay mapped until drop.
        unsafe {
            let lead = std::slice::from_raw_parts(self.start.sub(LEAD), LEAD);
            assert!(
                lead.iter().all(|g| *g == self.guard),
                "{what}: the kernel wrote below its buffer"
            );
            std::slice::from_raw_parts(self.start, self.len)
        }
    }
}

impl<T: Copy> Drop for Buf<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe {
            libc::munmap(self.map as *mut libc::c_void, self.map_len);
        }
    }
}

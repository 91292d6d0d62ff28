//! Which device a worker renders on: `SDFARM_DEVICE` = `auto` (the default: the first CUDA
//! GPU when the worker was built with the `cuda` feature and one is present, else the CPU),
//! `cpu`, `cuda` or `cuda:N`.

use candle_core::Device;

use super::EngineError;

const ACCEPTED: &str = "\"auto\", \"cpu\", \"cuda\" or \"cuda:N\" (N a GPU index; CUDA needs a \
                        worker built with the cuda feature)";

/// The device `SDFARM_DEVICE` names (see the module docs).
pub fn default_device() -> Result<Device, EngineError> {
    parse_device(std::env::var("SDFARM_DEVICE").as_deref().unwrap_or("auto"))
}

/// A device name as `SDFARM_DEVICE` takes it.
pub fn parse_device(name: &str) -> Result<Device, EngineError> {
    let name = name.trim().to_ascii_lowercase();
    let invalid =
        |why: String| EngineError::param("SDFARM_DEVICE", &name, format!("{ACCEPTED}; {why}"));
    match name.as_str() {
        "" | "auto" => Ok(if cfg!(feature = "cuda") {
            Device::cuda_if_available(0).unwrap_or(Device::Cpu)
        } else {
            Device::Cpu
        }),
        "cpu" => Ok(Device::Cpu),
        _ => {
            let ordinal = match name.strip_prefix("cuda") {
                Some("") => 0,
                Some(rest) => rest
                    .strip_prefix(':')
                    .and_then(|n| n.parse::<usize>().ok())
                    .ok_or_else(|| invalid("the GPU index is not a number".into()))?,
                None => return Err(invalid("not a device name".into())),
            };
            if !cfg!(feature = "cuda") {
                return Err(invalid("this worker was built without CUDA".into()));
            }
            Device::new_cuda(ordinal).map_err(|e| invalid(e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert!(parse_device(" CPU ").unwrap().is_cpu());
        let err = parse_device("tpu").unwrap_err().to_string();
        assert!(
            err.contains("SDFARM_DEVICE") && err.contains("cuda:N"),
            "{err}"
        );
        assert!(parse_device("cuda:x").is_err());
        if !cfg!(feature = "cuda") {
            assert!(parse_device("auto").unwrap().is_cpu());
            assert!(parse_device("cuda:0")
                .unwrap_err()
                .to_string()
                .contains("without CUDA"));
        }
    }
}

//! The standard `process_*` metrics (CPU, memory, file descriptors, start time), read from
//! `/proc/self` at scrape time. Names and help are [`super::catalogue`]'s.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::catalogue;

/// Reads `/proc/self` on every scrape.
#[derive(Debug)]
pub struct ProcessCollector;

fn gauge(
    encoder: &mut DescriptorEncoder,
    family: &catalogue::Family,
    value: f64,
) -> Result<(), std::fmt::Error> {
    ConstGauge::new(value).encode(family.describe(encoder)?)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(me) = procfs::process::Process::myself() else {
            return Ok(());
        };
        let tps = procfs::ticks_per_second() as f64;
        let page = procfs::page_size() as f64;
        if let Ok(stat) = me.stat() {
            let cpu = (stat.utime + stat.stime) as f64 / tps;
            let c = ConstCounter::new(cpu);
            c.encode(catalogue::PROCESS_CPU.describe(&mut encoder)?)?;
            gauge(
                &mut encoder,
                &catalogue::PROCESS_RESIDENT_MEMORY,
                stat.rss as f64 * page,
            )?;
            gauge(
                &mut encoder,
                &catalogue::PROCESS_VIRTUAL_MEMORY,
                stat.vsize as f64,
            )?;
            gauge(
                &mut encoder,
                &catalogue::PROCESS_THREADS,
                stat.num_threads as f64,
            )?;
            if let Ok(boot) = procfs::boot_time_secs() {
                gauge(
                    &mut encoder,
                    &catalogue::PROCESS_START_TIME,
                    boot as f64 + stat.starttime as f64 / tps,
                )?;
            }
        }
        if let Ok(n) = me.fd_count() {
            gauge(&mut encoder, &catalogue::PROCESS_OPEN_FDS, n as f64)?;
        }
        if let Ok(limits) = me.limits() {
            if let procfs::process::LimitValue::Value(v) = limits.max_open_files.soft_limit {
                gauge(&mut encoder, &catalogue::PROCESS_MAX_FDS, v as f64)?;
            }
        }
        Ok(())
    }
}

//! Interrupts per vector (and on the INTx line), as the host counts them. A passed-through
//! device's MSI-X (or MSI) vectors reach KVM through eventfds without passing through zones, so zones cannot count them
//! on the way; the host kernel does, for the IRQs VFIO requests for them, named
//! `vfio-msix[N](ADDRESS)` (`vfio-msi[N](ADDRESS)`) in `/proc/interrupts`. Those IRQs exist while
//! the guest has the vectors enabled: the counts start again when it enables them again.

/// `(vector, interrupts)` of `address` in the text of `/proc/interrupts`, by vector.
pub(crate) fn per_vector(proc_interrupts: &str, address: &str) -> Vec<(u32, u64)> {
    let mut out: Vec<(u32, u64)> = named(proc_interrupts)
        .filter_map(|(name, count)| {
            let inner = name
                .strip_prefix("vfio-msix[")
                .or_else(|| name.strip_prefix("vfio-msi["))?;
            let (vector, rest) = inner.split_once(']')?;
            (rest == format!("({address})")).then_some((vector.parse().ok()?, count))
        })
        .collect();
    out.sort_unstable();
    out
}

/// The interrupts of `address`'s INTx (VFIO's `vfio-intx(ADDRESS)`), if VFIO holds its IRQ.
pub(crate) fn intx(proc_interrupts: &str, address: &str) -> Option<u64> {
    let name = format!("vfio-intx({address})");
    named(proc_interrupts).find_map(|(n, count)| (n == name).then_some(count))
}

/// Each IRQ line's name (its last column) and its count summed over the CPUs.
fn named(proc_interrupts: &str) -> impl Iterator<Item = (&str, u64)> {
    let mut lines = proc_interrupts.lines();
    let cpus = lines
        .next()
        .map_or(0, |header| header.split_whitespace().count());
    lines.filter_map(move |line| {
        let name = line.split_whitespace().last()?;
        let count = line
            .split_whitespace()
            .skip(1)
            .take(cpus)
            .map_while(|n| n.parse::<u64>().ok())
            .fold(0u64, u64::saturating_add);
        Some((name, count))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "            CPU0       CPU1
   0:         46          0   IO-APIC   2-edge      timer
  24:          0          0  IR-PCI-MSIX-0000:00:02.0    0-edge      vfio-msix[0](0000:00:02.0)
  25:         17          3  IR-PCI-MSIX-0000:00:02.0    1-edge      vfio-msix[1](0000:00:02.0)
  26:          5          0  IR-PCI-MSIX-0000:00:03.0    0-edge      vfio-msix[0](0000:00:03.0)
  27:          9          1  IR-PCI-MSI-0000:00:01.0    0-edge      vfio-msi[0](0000:00:01.0)
  21:          0          2  IR-IO-APIC  21-fasteoi   vfio-intx(0000:00:01.0)
 NMI:          0          0   Non-maskable interrupts
";

    #[test]
    fn counts_each_vector_of_the_device_on_every_cpu() {
        assert_eq!(per_vector(SAMPLE, "0000:00:02.0"), vec![(0, 0), (1, 20)]);
        assert_eq!(per_vector(SAMPLE, "0000:00:01.0"), vec![(0, 10)]);
        assert_eq!(per_vector(SAMPLE, "0000:00:02.1"), vec![]);
        assert_eq!(per_vector("", "0000:00:02.0"), vec![]);
        assert_eq!(
            per_vector("CPU0\n 1: x y vfio-msix[z](0000:00:02.0)\n", "0000:00:02.0"),
            vec![]
        );
    }

    #[test]
    fn counts_the_intx_line_of_the_device() {
        assert_eq!(intx(SAMPLE, "0000:00:01.0"), Some(2));
        assert_eq!(intx(SAMPLE, "0000:00:02.0"), None);
        assert_eq!(intx("", "0000:00:01.0"), None);
    }
}

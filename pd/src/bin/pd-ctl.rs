//! `pd-ctl`: inspect and steer a Mnemosyne cluster through PD's HTTP API.
//! See [`mnemo_pd::ctl`] and `pd-ctl help`.

fn main() -> std::process::ExitCode {
    mnemo_pd::ctl::main()
}

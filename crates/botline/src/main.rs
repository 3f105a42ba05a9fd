//! `botline`: Botline's command line with its built-in records and `/register` only. A bot
//! with handlers of its own is the same binary with its `Bot` (see `examples/notes-bot`).

fn main() -> std::process::ExitCode {
    botline::handler::Bot::new().main()
}

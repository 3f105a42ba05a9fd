//! `botline-worker`: the worker Lambda function (see the crate docs), with Botline's records
//! and `/register` only. A bot's own worker is the same with its `Bot`.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    botline_lambda::worker::run(botline::handler::Bot::new()).await
}

//! Secrets from Secrets Manager, SSM Parameter Store and files, against the moto server.

mod common;

use botline_aws::secrets::{SecretSource, SecretValue, Secrets};
use std::time::Duration;

fn unique(name: &str) -> String {
    format!("{name}-{}", uuid::Uuid::new_v4().simple())
}

async fn secrets(refresh: Duration) -> (Secrets, aws_config::SdkConfig) {
    let config = common::sdk_config(&common::options(&common::moto().endpoint)).await;
    (Secrets::new(&config).with_refresh(refresh), config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolves_a_secrets_manager_secret_and_an_ssm_parameter() {
    let (secrets, config) = secrets(Secrets::DEFAULT_REFRESH).await;
    let manager = aws_sdk_secretsmanager::Client::new(&config);
    let id = unique("botline/bot-token");
    let arn = manager
        .create_secret()
        .name(&id)
        .secret_string("  123456:bot-token-value\n")
        .send()
        .await
        .expect("CreateSecret")
        .arn
        .expect("an ARN");
    for reference in [id.clone(), arn] {
        let value = secrets
            .resolve("BOT_TOKEN", &SecretSource::SecretsManager(reference))
            .await
            .unwrap();
        assert_eq!(value.expose(), "123456:bot-token-value");
    }

    let ssm = aws_sdk_ssm::Client::new(&config);
    let parameter = format!("/{}", unique("botline/openai"));
    ssm.put_parameter()
        .name(&parameter)
        .value("sk-parameter-value")
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        // PutParameter has no idempotency token: an attempt that timed out on a busy emulator
        // and is retried by the SDK must not fail as "already exists".
        .overwrite(true)
        .send()
        .await
        .expect("PutParameter");
    let value = secrets
        .resolve("OPENAI_API_KEY", &SecretSource::Parameter(parameter))
        .await
        .unwrap();
    assert_eq!(value.expose(), "sk-parameter-value");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_is_seen_after_the_refresh_interval() {
    let (secrets, config) = secrets(Duration::from_secs(1)).await;
    let manager = aws_sdk_secretsmanager::Client::new(&config);
    let id = unique("botline/webhook");
    manager
        .create_secret()
        .name(&id)
        .secret_string("first-value")
        .send()
        .await
        .unwrap();
    let source = SecretSource::SecretsManager(id.clone());
    assert_eq!(
        secrets
            .resolve("WEBHOOK_SECRET", &source)
            .await
            .unwrap()
            .expose(),
        "first-value"
    );
    manager
        .put_secret_value()
        .secret_id(&id)
        .secret_string("second-value")
        .send()
        .await
        .unwrap();
    assert_eq!(
        secrets
            .resolve("WEBHOOK_SECRET", &source)
            .await
            .unwrap()
            .expose(),
        "first-value",
        "cached within the interval"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        secrets
            .resolve("WEBHOOK_SECRET", &source)
            .await
            .unwrap()
            .expose(),
        "second-value"
    );

    // Gone: the value fetched before stays in use.
    manager
        .delete_secret()
        .secret_id(&id)
        .force_delete_without_recovery(true)
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        secrets
            .resolve("WEBHOOK_SECRET", &source)
            .await
            .unwrap()
            .expose(),
        "second-value"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_secret_never_its_value() {
    let (secrets, _) = secrets(Duration::from_secs(1)).await;
    let missing = secrets
        .resolve(
            "BOT_TOKEN",
            &SecretSource::SecretsManager(unique("botline/none")),
        )
        .await
        .unwrap_err();
    assert!(
        missing.to_string().starts_with("secret BOT_TOKEN: "),
        "{missing}"
    );

    let dir = std::env::temp_dir().join(unique("botline-secret"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    std::fs::write(&file, "file-secret-value\n").unwrap();
    let source = SecretSource::File(file.clone());
    assert_eq!(
        secrets
            .resolve("BOT_TOKEN", &source)
            .await
            .unwrap()
            .expose(),
        "file-secret-value"
    );
    std::fs::write(&file, "rotated-file-value").unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        secrets
            .resolve("BOT_TOKEN", &source)
            .await
            .unwrap()
            .expose(),
        "rotated-file-value"
    );
    std::fs::write(&file, "  \n").unwrap();
    let fresh = Secrets::new(&common::sdk_config(&common::options(&common::moto().endpoint)).await);
    let empty = fresh.resolve("BOT_TOKEN", &source).await.unwrap_err();
    assert!(empty.to_string().contains("empty"), "{empty}");
    std::fs::remove_dir_all(&dir).unwrap();

    let both = SecretSource::from_lookup("BOT_TOKEN", |name| match name {
        "BOTLINE_BOT_TOKEN" => Some("inline-secret-value".into()),
        "BOTLINE_BOT_TOKEN_PARAM" => Some("/botline/bot".into()),
        _ => None,
    })
    .unwrap_err();
    let shown = format!("{both} {both:?}");
    assert!(!shown.contains("inline-secret-value"), "{shown}");
    let value = SecretValue::new("inline-secret-value");
    assert!(!format!("{value:?} {value} {secrets:?}").contains("inline-secret-value"));
}

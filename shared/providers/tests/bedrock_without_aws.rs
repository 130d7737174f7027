//! Without cargo feature `aws` the AWS SDK is not compiled in: a `bedrock` deployment fails when
//! the deployments are built, with the command that builds it.
#![cfg(not(feature = "aws"))]

use std::collections::BTreeMap;

use taskexec_providers::Deployments;
use taskexec_providers::config::DeploymentConfig;

#[test]
fn a_bedrock_deployment_names_the_aws_build() {
    let configs: BTreeMap<String, DeploymentConfig> =
        toml::from_str("[b]\nkind = \"bedrock\"\nregion = \"us-east-1\"").unwrap();
    let e = Deployments::from_config(&configs, |_| None).unwrap_err();
    assert_eq!(e.to_string(), "deployment `b`: kind `bedrock` needs the AWS build: `cargo build --features aws`");
}

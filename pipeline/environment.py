"""Where an environment's resources are: Terraform's outputs, or environment variables.

Every name the deploy needs is one of the environment root's outputs
(`terraform output -json` of `terraform/envs/<env>`). Each can also be given,
or overridden, by a variable `<ENV>_<OUTPUT>` (e.g. `DEV_CLUSTER_NAME`,
`PROD_ENDPOINT_URL`) for machines without the Terraform state at hand.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from pipeline import deadline, terraform
from pipeline.terraform import ENVIRONMENTS, TERRAFORM_DIR, environments
from service import aws

__all__ = ["ENVIRONMENTS", "TERRAFORM_DIR", "Environment", "environments", "resolve"]

# Tries in all, the first included, of every call the pipeline makes.
AWS_TOTAL_ATTEMPTS = 9


def regional_client(service: str, region: str, *, by: float | None = None) -> Any:
    """A boto3 client for `service` in `region`, retrying throttling and transient errors
    up to AWS_TOTAL_ATTEMPTS tries in all (`service.aws.client`: standard retry mode).

    `by`: a time.monotonic() by which each of its calls ends (`pipeline.deadline`: short
    tries, and none started or retried that could not end by then)."""
    tries = deadline.TRY_TIMEOUTS if by is not None else {}
    client = aws.client(service, region=region, total_attempts=AWS_TOTAL_ATTEMPTS, **tries)
    return client if by is None else deadline.bound(client, by)


class MissingEnvironment(Exception):
    """The environment's resource names cannot be found; the message says how to give them."""


@dataclass(frozen=True)
class Environment:
    environment: str
    aws_region: str
    cluster_name: str
    service_name: str
    task_family: str
    task_definition_arn: str
    container_name: str
    ecr_repository_url: str
    capture_url: str
    deployments_url: str
    models_url: str
    endpoint_url: str
    # Environments whose verified images this one ships (Terraform's
    # `promote_from_environments` output; prod: ("dev",)). Empty: it builds its own.
    promote_from: tuple[str, ...] = ()
    # The Secrets Manager secret holding the service's bearer tokens (Terraform's
    # `api_token_secret_arn` output); empty when the service runs without authentication.
    api_token_secret_arn: str = ""
    # The task family the compaction schedule runs, and its task role (Terraform's
    # `compaction_task_family` and `compaction_role_arn` outputs): a successful release
    # registers its image there (pipeline.compaction_task). Empty: left as it is.
    compaction_task_family: str = ""
    compaction_role_arn: str = ""

    def client(self, service: str, *, by: float | None = None) -> Any:
        """A boto3 client for `service` in this environment's region (its `aws_region` output),
        its calls ending by `by` when given (`regional_client`).

        Never the ambient region: ECS clusters and ECR repositories are regional, so a
        client in another region would look for them in the wrong place.
        """
        return regional_client(service, self.aws_region, by=by)

    def api_token(self) -> str | None:
        """The bearer token the pipeline presents to this environment's service, or None
        when the service runs without authentication.

        Read from the secret the task definition injects as API_TOKENS, and parsed the way
        the service parses it (`service.auth.parse_tokens`): the first token. Raises
        MissingEnvironment when the secret cannot be read or holds no usable token.
        """
        if not self.api_token_secret_arn:
            return None
        from botocore.exceptions import BotoCoreError, ClientError

        from service.auth import TokenError, parse_tokens

        try:
            secret = self.client("secretsmanager").get_secret_value(
                SecretId=self.api_token_secret_arn
            )
            tokens = parse_tokens(secret.get("SecretString") or "")
        except (BotoCoreError, ClientError) as exc:
            raise MissingEnvironment(
                f"cannot read the {self.environment} service's API token from "
                f"{self.api_token_secret_arn} ({exc}): the deploy role needs "
                "secretsmanager:GetSecretValue on it (terraform/modules/ci grants it)"
            ) from None
        except TokenError as exc:
            raise MissingEnvironment(f"{self.api_token_secret_arn}: {exc}") from None
        if not tokens:
            raise MissingEnvironment(
                f"{self.api_token_secret_arn} holds no token: put one in it (README, "
                '"Authentication")'
            )
        return tokens[0]

    @property
    def records_url(self) -> str:
        """This environment's deployment records: `<deployments_url>/<env>`."""
        return f"{self.deployments_url.rstrip('/')}/{self.environment}"


# Outputs every environment has; the others are optional.
OPTIONAL = (
    "environment",
    "promote_from",
    "api_token_secret_arn",
    "compaction_task_family",
    "compaction_role_arn",
)
REQUIRED = tuple(f.name for f in fields(Environment) if f.name not in OPTIONAL)
PROMOTE_FROM_OUTPUT = "promote_from_environments"
TOKEN_SECRET_OUTPUT = "api_token_secret_arn"
# Optional names read like the required ones: `<ENV>_<OUTPUT>`, else the output, else "".
OPTIONAL_OUTPUTS = (TOKEN_SECRET_OUTPUT, "compaction_task_family", "compaction_role_arn")


def terraform_outputs(environment: str) -> Mapping[str, object]:
    """The environment root's outputs; TERRAFORM_DIR names another copy of terraform/.

    A root that was never initialised here (a fresh CI checkout) is first initialised
    against its S3 state (TF_STATE_BUCKET).
    """
    directory = Path(os.environ.get("TERRAFORM_DIR") or TERRAFORM_DIR)
    try:
        return terraform.outputs(environment, terraform_dir=directory)
    except terraform.TerraformError:
        # Not initialised against its state yet: init_env says what is missing, if anything.
        terraform.init_env(environment, terraform_dir=directory)
        return terraform.outputs(environment, terraform_dir=directory)


def output(environment: str, name: str, environ: Mapping[str, str] | None = None) -> str:
    """One name: `<ENV>_<NAME>` when set, else the Terraform output."""
    env = os.environ if environ is None else environ
    given = env.get(override_name(environment, name))
    if given:
        return given
    try:
        value = terraform_outputs(environment).get(name)
    except Exception as exc:  # the message below says what to do either way
        value, problem = None, f" (terraform output failed: {exc})"
    else:
        problem = ""
    if not value:
        raise MissingEnvironment(
            f"the {environment} environment's {name} is unknown{problem}: run `terraform apply` "
            f"in terraform/envs/{environment} (nox -s apply -- {environment}), or set "
            f"{override_name(environment, name)}"
        )
    return str(value)


def override_name(environment: str, output: str) -> str:
    return f"{environment.upper()}_{output.upper()}"


def resolve(
    environment: str,
    *,
    terraform_outputs: Callable[[str], Mapping[str, object]] | None = terraform_outputs,
    environ: Mapping[str, str] | None = None,
) -> Environment:
    """The environment's resource names: variables first, then Terraform outputs."""
    if environment not in ENVIRONMENTS:
        raise MissingEnvironment(
            f"unknown environment {environment!r}: use one of {', '.join(ENVIRONMENTS)}"
        )
    env = os.environ if environ is None else environ
    given = {
        name: env[override_name(environment, name)]
        for name in REQUIRED
        if env.get(override_name(environment, name))
    }
    outputs: Mapping[str, object] = {}
    missing = [name for name in REQUIRED if name not in given]
    terraform_problem = ""
    if missing and terraform_outputs is not None:
        try:
            outputs = terraform_outputs(environment)
        except Exception as exc:  # any failure: say it along with the variables' names
            terraform_problem = f" (terraform output failed: {exc})"
    values = {name: given.get(name, outputs.get(name)) for name in REQUIRED}
    still_missing = [name for name, value in values.items() if not value]
    if still_missing:
        variables = ", ".join(override_name(environment, n) for n in still_missing)
        raise MissingEnvironment(
            f"the {environment} environment's {', '.join(still_missing)} are unknown"
            f"{terraform_problem}: run `terraform apply` in terraform/envs/{environment} "
            f"(nox -s apply -- {environment}) so its outputs exist, or set {variables}"
        )
    given_sources = env.get(override_name(environment, PROMOTE_FROM_OUTPUT))
    if given_sources is not None:
        sources = [name.strip() for name in given_sources.split(",") if name.strip()]
    else:
        sources = list(outputs.get(PROMOTE_FROM_OUTPUT) or [])
    optional = {}
    for name in OPTIONAL_OUTPUTS:
        value = env.get(override_name(environment, name))
        optional[name] = str(outputs.get(name) or "") if value is None else value
    return Environment(
        environment=environment,
        promote_from=tuple(str(name) for name in sources),
        **optional,
        **{k: str(v) for k, v in values.items()},
    )

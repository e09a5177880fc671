"""Checks that need no AWS: formatting, validation, checkov, the env-root contract,
and the error messages of pipeline.terraform."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipeline import aws_calls, cli, promotion, terraform
from pipeline.environment import REQUIRED
from service.config import APP_ENV_PATTERN
from tests.terraform.ecr_lifecycle import Image, expired

TERRAFORM_DIR = terraform.TERRAFORM_DIR
ENVS = TERRAFORM_DIR / "envs"
MODULES = ("storage", "registry", "network", "service", "ci", "capture_catalog")
MODULE_FILES = ("main.tf", "variables.tf", "outputs.tf", "versions.tf", "README.md")
# The root files every environment shares byte for byte; only values differ.
SHARED_ROOT_FILES = ("main.tf", "variables.tf", "outputs.tf", "versions.tf", ".terraform.lock.hcl")
VALUE_FILES = ("terraform.tfvars", "backend.hcl")

# What the deploy (pipeline) reads from `terraform output -json`.
DEPLOY_OUTPUTS = frozenset(
    {
        "environment",
        "aws_region",
        "cluster_name",
        "service_name",
        "task_family",
        "ecr_repository_url",
        "ecr_repository_name",
        "bucket_name",
        "capture_url",
        "deployments_url",
        "endpoint_url",
        "task_role_arn",
        "execution_role_arn",
        "container_name",
        "log_group_name",
        "deploy_role_arn",
        "api_token_secret_arn",
    }
) | frozenset(REQUIRED)


def assignments(path: Path) -> dict[str, str]:
    """Top-level `name = value` lines of a tfvars or backend.hcl file."""
    found = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([a-z_]+)\s*=\s*(.+)$", line)
        if match:
            found[match.group(1)] = match.group(2).strip()
    return found


def declared(pattern: str, path: Path) -> set[str]:
    return set(re.findall(pattern, path.read_text(), flags=re.M))


# ---------------------------------------------------------------------------
# Layout and contract
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("module", MODULES)
def test_every_module_has_the_four_files_and_a_readme(module: str) -> None:
    missing = [
        name for name in MODULE_FILES if not (TERRAFORM_DIR / "modules" / module / name).is_file()
    ]
    assert not missing, f"modules/{module} lacks {missing}"


def committed_files(root: Path) -> set[str]:
    """Files of a root that belong in git (not plans, state or test overrides)."""
    return {
        p.name
        for p in root.iterdir()
        if p.is_file()
        and p.name != "tfplan"
        and ".tfstate" not in p.name
        and not p.name.endswith("override.tf")
    }


def test_env_roots_differ_only_in_values() -> None:
    dev, prod = ENVS / "dev", ENVS / "prod"
    for name in SHARED_ROOT_FILES:
        assert (dev / name).read_bytes() == (prod / name).read_bytes(), f"{name} differs"
    assert committed_files(dev) == committed_files(prod) == set(SHARED_ROOT_FILES + VALUE_FILES)


@pytest.mark.parametrize("env", terraform.ENVIRONMENTS)
def test_tfvars_only_set_declared_variables_and_name_their_environment(env: str) -> None:
    values = assignments(ENVS / env / "terraform.tfvars")
    variables = declared(r'^variable "(\w+)"', ENVS / env / "variables.tf")
    assert set(values) <= variables, f"undeclared: {set(values) - variables}"
    assert values["environment"] == f'"{env}"'


@pytest.mark.parametrize("env", terraform.ENVIRONMENTS)
def test_backend_has_its_own_state_key_and_locking(env: str) -> None:
    backend = assignments(ENVS / env / "backend.hcl")
    assert backend["key"] == f'"onnx-ship/{env}/terraform.tfstate"'
    assert "bucket" not in backend, "the bucket comes from TF_STATE_BUCKET, not from git"
    versions = (ENVS / env / "versions.tf").read_text()
    assert re.search(r'backend "s3" \{[^}]*use_lockfile\s*=\s*true', versions)


def test_environment_inputs_are_required_or_have_a_real_default() -> None:
    """A null default lets a root apply without the input and silently drop what it
    feeds (state_bucket_name: the deploy role's reading of the Terraform state)."""
    files = [*ENVS.glob("*/variables.tf"), *(TERRAFORM_DIR / "modules").glob("*/variables.tf")]
    assert files
    offenders = [
        f"{path.relative_to(TERRAFORM_DIR)}: {name}"
        for path in files
        for name, body in re.findall(r'^variable "(\w+)" \{(.*?)^\}', path.read_text(), re.M | re.S)
        if re.search(r"^\s*default\s*=\s*null\s*$", body, re.M)
    ]
    assert offenders == []


def code_in(path: Path) -> list[str]:
    """The fenced blocks and inline code spans of a Markdown file."""
    text = path.read_text()
    fenced = re.findall(r"```.*?```", text, flags=re.S)
    for block in fenced:
        text = text.replace(block, "")
    return fenced + re.findall(r"`([^`]+)`", text)


@pytest.mark.parametrize("doc", ["README.md", "terraform/README.md"])
def test_documented_environment_applies_pass_the_state_bucket(doc: str) -> None:
    """Every `terraform apply` of an environment root the docs show works as written:
    state_bucket_name has no default."""
    applies = [
        code
        for code in code_in(TERRAFORM_DIR.parent / doc)
        if re.search(r"terraform\b[^\n]*\bapply\b", code)
        and "envs" in code
        and "bootstrap" not in code
    ]
    assert applies, f"{doc} shows no terraform apply of an environment"
    assert [code for code in applies if "state_bucket_name=" not in code] == []


def test_prod_runs_two_tasks_across_two_zones_at_least() -> None:
    prod = assignments(ENVS / "prod" / "terraform.tfvars")
    assert int(prod["desired_count"]) >= 2 and int(prod["min_capacity"]) >= 2
    assert len(json.loads(prod["availability_zones"])) >= 2
    assert prod["nat_gateways"] == '"per_az"'


def test_each_environment_has_its_cost_profile() -> None:
    """dev: no NAT gateway, no Container Insights, capture kept 30 days; prod: a NAT
    gateway per zone, Container Insights, capture kept 400 days. Both log rejected
    traffic only (the roots' default)."""
    dev = assignments(ENVS / "dev" / "terraform.tfvars")
    prod = assignments(ENVS / "prod" / "terraform.tfvars")
    changed = (
        "is not the shipped cost profile that README's 'What it costs' prices: if you "
        "changed it on purpose, change that table and this test with it"
    )
    assert (dev["nat_gateways"], prod["nat_gateways"]) == ('"none"', '"per_az"'), changed
    assert (dev["container_insights"], prod["container_insights"]) == ("false", "true"), changed
    assert (dev["capture_retention_days"], prod["capture_retention_days"]) == (
        "30",
        "400",
    ), changed
    for values in (dev, prod):
        assert "flow_log_traffic_type" not in values
    variables = (ENVS / "dev" / "variables.tf").read_text()
    flow_logs = re.search(r'variable "flow_log_traffic_type" \{.*?^\}', variables, re.M | re.S)
    assert flow_logs and 'default     = "REJECT"' in flow_logs.group(0)


def test_capture_parts_under_128_kb_never_change_storage_class() -> None:
    """STANDARD_IA and GLACIER_IR bill an object as 128 KB at least, plus a fee per
    transition: the lifecycle sets S3's minimum transition size explicitly (moto reports
    it whatever was sent, so the applied tests cannot tell)."""
    storage = (TERRAFORM_DIR / "modules" / "storage" / "main.tf").read_text()
    assert re.search(
        r'^\s*transition_default_minimum_object_size\s*=\s*"all_storage_classes_128K"',
        storage,
        re.M,
    )
    assert "varies_by_storage_class" not in storage


def measured_requests_per_vcpu(readme: Path = TERRAFORM_DIR.parent / "README.md") -> float:
    """Requests/s one vCPU serves with p99 under 15 ms: the slowest single-image row at
    c=16 with capture on (as deploys run it) in the README's quiet-run benchmark tables,
    so a run on a faster state of the machine never raises the capacity the targets rest on."""
    rows = []
    for line in readme.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 10 and cells[0] == "service" and "single" in cells[1]:
            _, _, capture, connections, requests, _, _, p99, *_ = cells
            if capture == "on" and connections == "16":
                assert float(p99) < 15, f"p99 {p99} ms at c=16: the capacity figure is stale"
                rows.append(float(requests.replace(",", "")))
    assert rows, "README's benchmark table has no service single-image rows at c=16"
    return min(rows)


@pytest.mark.parametrize("env", terraform.ENVIRONMENTS)
def test_request_scaling_target_is_derived_from_measured_capacity(env: str) -> None:
    """ALBRequestCountPerTarget is a one-minute Sum per task, so requests_per_target / 60
    is requests/s per task; it aims at 30-80 % of what the task's vCPUs served in the
    benchmark: headroom, yet not a target the service never reaches."""
    values = assignments(ENVS / env / "terraform.tfvars")
    capacity = measured_requests_per_vcpu() * int(values["task_cpu"]) / 1024
    target = int(values["requests_per_target"]) / 60
    assert 0.3 <= target / capacity <= 0.8, f"{target:.0f}/s per task of {capacity:.0f}/s"


def test_deploy_role_trusts_the_workflow_that_deploys() -> None:
    """The deploy role's subject names pipeline.yml by path; if the file moved, no deploy
    could assume the role. pipeline.yml deploys <env> from the branch <env>, in the GitHub
    environment of that name."""
    variables = (TERRAFORM_DIR / "modules" / "ci" / "variables.tf").read_text()
    path = re.search(
        r'variable "github_workflow_path" \{.*?default\s*=\s*"([^"]+)"', variables, re.S
    )
    assert path, "modules/ci has no github_workflow_path default"
    workflow = (TERRAFORM_DIR.parent / path.group(1)).read_text()
    assert "environment: ${{ github.ref_name }}" in workflow
    main = (ENVS / "dev" / "main.tf").read_text()
    assert "github_branch     = var.environment" in main


@pytest.mark.parametrize("env", terraform.ENVIRONMENTS)
def test_every_output_the_deploy_reads_is_declared(env: str) -> None:
    outputs = declared(r'^output "(\w+)"', ENVS / env / "outputs.tf")
    assert outputs >= DEPLOY_OUTPUTS, f"missing: {sorted(DEPLOY_OUTPUTS - outputs)}"


def test_the_pipeline_owns_the_task_definition() -> None:
    service = (TERRAFORM_DIR / "modules" / "service" / "main.tf").read_text()
    assert "ignore_changes = [task_definition, desired_count]" in service


# ---------------------------------------------------------------------------
# The task definition against the image it runs
# ---------------------------------------------------------------------------

DOCKERFILE = TERRAFORM_DIR.parent / "Dockerfile"
APP_UID = "10001"


def runtime_instructions(dockerfile: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile's last stage, continuation lines joined."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, arguments = line.partition(" ")
            if keyword.upper() == "FROM":
                instructions = []
            instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def owned_directories(command: str, uid: str) -> set[str]:
    """Directories a RUN command creates or chowns for `uid:uid` (install -d -o, chown)."""
    found = set()
    for step in command.split("&&"):
        words = shlex.split(step)
        if words[:2] == ["install", "-d"]:
            options = dict(zip(words[2::2], words[3::2], strict=False))
            if options.get("-o") == uid and options.get("-g") == uid:
                found |= {word for word in words if word.startswith("/")}
        elif words[:1] == ["chown"] and len(words) > 2 and words[1] == f"{uid}:{uid}":
            found |= set(words[2:])
    return found


def test_every_mounted_path_is_a_volume_the_image_owns_for_its_user() -> None:
    """With readonlyRootFilesystem only volumes are writable, and Fargate creates a bind
    mount owned by root, mode 0755, unless the image declares a VOLUME at exactly its
    containerPath; then ECS copies the image's directory, owner included (ECS developer
    guide, "Bind mounts"). So each mounted path must be such a VOLUME, owned by the
    image's user before it is declared."""
    service = (TERRAFORM_DIR / "modules" / "service" / "main.tf").read_text()
    mounted = re.findall(r'containerPath\s*=\s*"([^"]+)"', service)
    assert mounted, "the task definition mounts nothing: where does the service write?"
    owned: set[str] = set()
    volumes: set[str] = set()
    users = []
    for keyword, arguments in runtime_instructions():
        if keyword == "RUN":
            owned |= owned_directories(arguments, APP_UID)
        elif keyword == "VOLUME":
            declared_now = json.loads(arguments) if arguments.startswith("[") else arguments.split()
            assert set(declared_now) <= owned, f"VOLUME {declared_now} before it is owned"
            volumes |= set(declared_now)
        elif keyword == "USER":
            users.append(arguments)
    assert users[-1] == f"{APP_UID}:{APP_UID}"
    assert set(mounted) <= volumes, f"mounted but not a VOLUME of the image: {mounted}"


def test_every_environment_terraform_admits_is_one_the_service_takes() -> None:
    """The environment becomes the service's APP_ENV: a name a module or root admitted but
    service/config.py refuses would stop every task at start-up (exit 2)."""
    rules = {
        str(path.relative_to(TERRAFORM_DIR)): rule
        for path in TERRAFORM_DIR.rglob("*.tf")
        for rule in re.findall(r'regex\("([^"]+)", var\.environment\)', path.read_text())
    }
    assert len(rules) >= 3, rules  # the service module and both roots
    assert set(rules.values()) == {APP_ENV_PATTERN.pattern}, rules


def test_no_test_overrides_in_the_real_roots() -> None:
    text = "\n".join(p.read_text() for p in TERRAFORM_DIR.rglob("*.tf"))
    for marker in ("skip_credentials_validation", "endpoints", "127.0.0.1", "localhost", "/opt/"):
        assert marker not in text, f"{marker!r} belongs in the test override only"
    assert not list(TERRAFORM_DIR.rglob("*override.tf"))


def test_the_glue_tables_hour_projection_is_the_part_format() -> None:
    """The Glue table's projection pattern and location template, against the keys the
    service writes (both from service/capture/partformat.py)."""
    from service.capture import partformat

    catalog = TERRAFORM_DIR / "modules" / "capture_catalog"
    default = re.search(
        r'variable "hour_format" \{[^}]*default\s*=\s*"([^"]+)"',
        (catalog / "variables.tf").read_text(),
    )
    assert default and default.group(1) == partformat.projection_format()
    main = (catalog / "main.tf").read_text()
    assert re.search(r'capture_prefix\s*=\s*"capture/\$\{var.environment\}"', main)
    assert '"storage.location.template"     = "${local.location}$${hour}/"' in main
    assert 'location       = "s3://${var.bucket_name}/${local.capture_prefix}/"' in main


def test_the_saved_queries_count_each_record_once_as_the_report_does() -> None:
    """The saved queries read the capture through the same de-duplicating clause as
    `report --engine athena` (pipeline/predictions/athena.py's deduplicated())."""
    from pipeline.predictions import athena

    main = (TERRAFORM_DIR / "modules" / "capture_catalog" / "main.tf").read_text()
    found = re.search(r"records = <<-SQL\n(.*?)\n\s*SQL\n", main, flags=re.S)
    assert found, "capture_catalog names no records clause"
    expected = athena.deduplicated("${local.table}", "%s")
    assert " ".join(found.group(1).split()) == " ".join(expected.split())
    assert main.count("FROM ${format(local.records, ") == 3
    assert "FROM ${local.table}" not in main.replace("FROM ${local.table} WHERE %s", "")


def test_every_checkov_skip_gives_a_reason() -> None:
    for path in TERRAFORM_DIR.rglob("*.tf"):
        for line in path.read_text().splitlines():
            if "checkov:skip" in line:
                assert re.search(r"checkov:skip=CKV2?_AWS_\d+:\S.{20,}", line), f"{path}: {line}"


# ---------------------------------------------------------------------------
# What a first apply waits for, and what later changes leave in place
# ---------------------------------------------------------------------------


def dependency_graph(terraform_bin: str, root: Path) -> dict[str, set[str]]:
    """What each resource of `root` waits for, as Terraform orders them: `terraform graph`
    (Terraform 1.7+: the configuration's resources and data sources, an edge from each to
    those it depends on, through locals, variables and module outputs alike), with a
    local backend, so nothing is read from AWS. Node -> the nodes of its edges."""
    (root / "graph_override.tf").write_text('terraform {\n  backend "local" {}\n}\n')
    terraform.init(root)
    dot = subprocess.run(
        [terraform_bin, "graph"], cwd=root, capture_output=True, text=True, timeout=120, check=True
    ).stdout
    graph: dict[str, set[str]] = {}
    for source, target in re.findall(r'^\s*"([^"]+)" -> "([^"]+)"', dot, flags=re.M):
        graph.setdefault(source, set()).add(target)
    assert graph, dot[-2000:]
    return graph


def waits_for(graph: Mapping[str, set[str]], node: str) -> set[str]:
    """Every node `node` depends on, directly or through others."""
    found: set[str] = set()
    todo = [node]
    while todo:
        for target in graph.get(todo.pop(), set()) - found:
            found.add(target)
            todo.append(target)
    return found


NETWORK = "module.network"
PUBLIC_ROUTES = {
    f"{NETWORK}.aws_internet_gateway.this",
    f"{NETWORK}.aws_route.public_internet",
    f"{NETWORK}.aws_route_table_association.public",
}


@pytest.mark.integration
@pytest.mark.parametrize("env", terraform.ENVIRONMENTS)
def test_a_first_apply_routes_the_subnets_before_the_load_balancer_and_the_tasks(
    env: str, terraform_bin: str, terraform_copy: Path
) -> None:
    """AWS refuses an internet-facing load balancer in a VPC without an attached internet
    gateway (InvalidSubnet), and a task that starts before its subnet routes to ECR
    (NAT, or the internet gateway in dev), to S3 (the gateway endpoint) and before its
    API-token secret has a value cannot start. A subnet ID exists before any of that, so
    the order is Terraform's graph, read here as Terraform computes it. The graph is the
    configuration's: prod's NAT routes are among what the service waits for, and dev,
    whose count of them is 0, waits for the public routes its tasks use."""
    graph = dependency_graph(terraform_bin, terraform_copy / "envs" / env)
    load_balancer = waits_for(graph, "module.service.aws_lb.this")
    assert load_balancer >= PUBLIC_ROUTES, sorted(PUBLIC_ROUTES - load_balancer)
    first_task_needs = PUBLIC_ROUTES | {
        f"{NETWORK}.aws_route.private_nat",
        f"{NETWORK}.aws_route_table_association.private",
        f"{NETWORK}.aws_vpc_endpoint.s3",
        "module.service.aws_secretsmanager_secret_version.api_tokens",
    }
    service = waits_for(graph, "module.service.aws_ecs_service.this")
    assert service >= first_task_needs, sorted(first_task_needs - service)


@pytest.mark.integration
@pytest.mark.parametrize("env", terraform.ENVIRONMENTS)
def test_the_scaling_policies_of_the_service_are_put_one_after_the_other(
    env: str, terraform_bin: str, terraform_copy: Path
) -> None:
    """Application Auto Scaling answers a PutScalingPolicy on a scalable target with a
    change still pending with ConcurrentUpdateException (API reference, PutScalingPolicy:
    Errors), which the AWS provider does not retry (its `resourcePolicyPut` retries only
    FailedResourceAccessException): a first apply that puts two policies at once can
    fail. moto, with autoscaling off in these tests, never shows it; Terraform's graph
    does."""
    graph = dependency_graph(terraform_bin, terraform_copy / "envs" / env)
    policies = sorted(n for n in graph if n.startswith("module.service.aws_appautoscaling_policy."))
    assert len(policies) >= 2, policies
    for i, policy in enumerate(policies):
        for other in policies[i + 1 :]:
            assert other in waits_for(graph, policy) or policy in waits_for(graph, other), (
                f"{policy} and {other} may be put at the same time"
            )


def console_value(
    terraform_bin: str, module: Path, expression: str, variables: dict[str, str]
) -> str:
    """`expression` as `terraform console` prints it in `module` (initialised), given
    `variables`: configuration only, no provider call, no state."""
    return subprocess.run(
        [terraform_bin, "console", *(f"-var={k}={v}" for k, v in variables.items())],
        input=expression,
        cwd=module,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.strip()


# One synthetic repository history: 300 pushes 8 hours apart (100 days), each tagged with
# its commit; every fifth a successful release, tagged verified- as well, the first of
# them the 3rd push (the image a later release of the same tree and model leaves
# verified); two untagged images (interrupted pushes), one old and one recent.
PUSH_INTERVAL = timedelta(hours=8)
FIRST_PUSH = datetime(2025, 1, 1, tzinfo=UTC)


def push_history() -> tuple[list[Image], list[Image]]:
    """(tagged pushes, oldest first; untagged images)."""
    model = "ab" * 32
    pushes = []
    for n in range(300):
        tags: tuple[str, ...] = (f"{n:040x}",)
        if n % 5 == 2:
            tags += (promotion.verified_tag(f"{n:040x}", model),)
        pushes.append(Image(f"sha256:{n:064x}", tags, FIRST_PUSH + n * PUSH_INTERVAL))
    untagged = [
        Image(f"sha256:{300 + n:064x}", (), FIRST_PUSH + n * PUSH_INTERVAL) for n in (10, 299)
    ]
    return pushes, untagged


@pytest.mark.integration
def test_released_images_outlive_every_later_push(terraform_bin: str, terraform_copy: Path) -> None:
    """A promoting environment ships the image tagged verified-<tree>-<model> in its
    source's repository, which may be far older than the last 50 pushes (the tag stays on
    the first image of a tree and model), and a rollback returns to an earlier release's
    image. The registry's lifecycle, as Terraform renders it and as ECR applies it
    (tests/terraform/ecr_lifecycle.py), keeps every released image of the history while
    still expiring old unreleased pushes and interrupted ones."""
    registry = terraform_copy / "modules" / "registry"
    terraform.init(registry, backend=False)
    rendered = console_value(terraform_bin, registry, "local.lifecycle_policy", {"name": "x"})
    policy = json.loads(json.loads(rendered))
    pushes, untagged = push_history()
    now = pushes[-1].pushed_at + timedelta(hours=1)
    gone = expired(policy, pushes + untagged, now)

    released = {image.digest for image in pushes if len(image.tags) == 2}
    assert pushes[2].digest in released and pushes[2].digest not in gone
    assert not gone & released
    newest = sorted(pushes + untagged, key=lambda image: image.pushed_at, reverse=True)[:50]
    assert not gone & {image.digest for image in newest}
    older = {image.digest for image in pushes if image not in newest}
    assert older - released <= gone
    assert untagged[0].digest in gone and untagged[1].digest not in gone


def test_the_lifecycle_evaluator_reproduces_the_ecr_user_guides_examples() -> None:
    """ECR user guide, "Examples of lifecycle policies": "Filtering on multiple rules"
    (examples A and B) and "Filtering on multiple tags in a single rule" (A and B)."""
    now = datetime(2025, 1, 31, tzinfo=UTC)

    def image(name: str, tags: tuple[str, ...], days_ago: int) -> Image:
        return Image(name, tags, now - timedelta(days=days_ago))

    def rule(priority: int, prefixes: list[str], **count: object) -> dict[str, object]:
        selection = {"tagStatus": "tagged", "tagPrefixList": prefixes, **count}
        return {"rulePriority": priority, "selection": selection, "action": {"type": "expire"}}

    one = {"countType": "imageCountMoreThan", "countNumber": 1}
    three = [
        image("A", ("beta-1", "prod-1"), 10),
        image("B", ("beta-2", "prod-2"), 9),
        image("C", ("beta-3",), 8),
    ]
    prod_first = {"rules": [rule(1, ["prod"], **one), rule(2, ["beta"], **one)]}
    beta_first = {"rules": [rule(1, ["beta"], **one), rule(2, ["prod"], **one)]}
    assert expired(prod_first, three, now) == {"A"}
    assert expired(beta_first, three, now) == {"A", "B"}

    six = [
        image("A", ("alpha-1",), 12),
        image("B", ("beta-1",), 11),
        image("C", ("alpha-2", "beta-2"), 10),
        image("D", ("alpha-3",), 4),
        image("E", ("beta-3",), 3),
        image("F", ("alpha-4", "beta-4"), 2),
    ]
    older_than_five = {"countType": "sinceImagePushed", "countUnit": "days", "countNumber": 5}
    assert expired({"rules": [rule(1, ["alpha", "beta"], **older_than_five)]}, six, now) == {"C"}
    not_exclusive = [
        image("A", ("alpha-1", "beta-1", "gamma-1"), 10),
        image("B", ("alpha-2", "beta-2"), 9),
        image("C", ("alpha-3", "beta-3", "gamma-2"), 8),
    ]
    assert expired({"rules": [rule(1, ["alpha", "beta"], **one)]}, not_exclusive, now) == {
        "A",
        "B",
    }


def test_the_registry_counts_released_images_by_the_tag_the_pipeline_gives_them() -> None:
    registry = (TERRAFORM_DIR / "modules" / "registry" / "main.tf").read_text()
    prefix = re.search(r'^\s*verified_tag_prefix\s*=\s*"([^"]+)"', registry, flags=re.M)
    assert prefix and prefix.group(1) == promotion.VERIFIED_PREFIX


def test_terraform_never_deregisters_a_task_definition_revision() -> None:
    """A failed first release returns the service to Terraform's revision, and ECS refuses
    UpdateService to an INACTIVE one (ECS API reference, DeregisterTaskDefinition): every
    task definition Terraform manages keeps its replaced revisions (skip_destroy), and no
    role may deregister one."""
    revisions = []
    for path in TERRAFORM_DIR.rglob("*.tf"):
        text = path.read_text()
        for block in re.findall(
            r'^resource "aws_ecs_task_definition" "\w+" \{\n.*?^\}', text, flags=re.M | re.S
        ):
            revisions.append(path)
            assert re.search(r"^  skip_destroy\s*=\s*true$", block, flags=re.M), path
        assert not re.search(r'"ecs:(\*|Deregister)', text), path
    assert revisions, "no aws_ecs_task_definition found"
    assert not [c for c in aws_calls.CALLS if c.action.endswith(":DeregisterTaskDefinition")]


# EC2 API reference: a security group's name and description (CreateSecurityGroup) and a
# rule's description (IpRange, UserIdGroupPair, PrefixListId: without `&`) take up to 255
# of these characters; anything else is InvalidParameterValue at apply time, which neither
# the provider nor moto checks beforehand. A group's name may not begin with "sg-".
SECURITY_GROUP_TEXT = re.compile(r"[A-Za-z0-9 ._\-:/()#,@\[\]+=;{}!$*]{0,255}")
SECURITY_GROUP_TYPES = (
    "aws_security_group",
    "aws_security_group_rule",
    "aws_vpc_security_group_ingress_rule",
    "aws_vpc_security_group_egress_rule",
)


def security_group_texts() -> list[tuple[str, str, str]]:
    """(file, resource, text) of every name and description a security group resource
    sends EC2, each `${...}` interpolation read as one letter (the names it takes are
    lowercase letters, digits and hyphens; CIDR blocks and group IDs keep to the set)."""
    found = []
    for path in sorted(TERRAFORM_DIR.rglob("*.tf")):
        text = path.read_text()
        for kind, name, block in re.findall(
            r'^resource "(\w+)" "(\w+)" \{\n(.*?)^\}', text, flags=re.M | re.S
        ):
            if kind not in SECURITY_GROUP_TYPES:
                continue
            for value in re.findall(r'^\s*(?:name|description)\s*=\s*"(.*)"$', block, re.M):
                found.append((path.name, f"{kind}.{name}", re.sub(r"\$\{[^}]*\}", "x", value)))
    return found


def test_every_security_group_name_and_description_is_one_ec2_accepts() -> None:
    texts = security_group_texts()
    assert len(texts) >= 10, texts  # the load balancer's and the tasks' groups and rules
    for path, resource, value in texts:
        assert SECURITY_GROUP_TEXT.fullmatch(value), (
            f"{path}: {resource}: {value!r} holds a character EC2 refuses "
            "(allowed: letters, digits, spaces and ._-:/()#,@[]+=;{}!$*)"
        )
        assert not value.startswith("sg-"), f"{path}: {resource}: {value!r}"


def evaluate(
    terraform_bin: str, root: Path, expression: str, **variables: str
) -> subprocess.CompletedProcess:
    """`expression` in an environment root (initialised with a local backend) as `terraform
    console` prints it with `variables` set; a value a validation refuses fails the call."""
    return subprocess.run(
        [terraform_bin, "console", *(f"-var={name}={value}" for name, value in variables.items())],
        input=expression,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )


def flat(text: str) -> str:
    """Terraform's boxed, coloured error text as one line of words."""
    return " ".join(re.sub(r"\x1b\[[0-9;]*m", "", text).replace("│", " ").split())


def names_in_root(terraform_bin: str, root: Path, project: str) -> subprocess.CompletedProcess:
    """`local.name` of an environment root for `project`."""
    return evaluate(terraform_bin, root, "local.name", project=project)


@pytest.mark.integration
def test_a_project_name_aws_would_refuse_is_refused_at_plan_time(
    terraform_bin: str, terraform_copy: Path
) -> None:
    """<project>-<environment> names the load balancer and the target group (at most 32
    letters, digits and hyphens, not beginning with internal-: Elastic Load Balancing API
    reference, CreateLoadBalancer) and begins the bucket's name (at most 63 with a 12-digit
    account ID and the region: S3 User Guide, "General purpose bucket naming rules"): the
    longest project and environment the roots admit fit both, and the rest are refused
    before any AWS call instead of halfway through an apply."""
    root = terraform_copy / "envs" / "dev"
    (root / "graph_override.tf").write_text('terraform {\n  backend "local" {}\n}\n')
    terraform.init(root)
    longest = "a" + "b" * 14
    assert names_in_root(terraform_bin, root, longest).stdout.strip() == f'"{longest}-dev"'
    longest_region = "ap-southeast-7"
    assert len(f"{longest}-{'e' * 16}") <= 32
    assert len(f"{longest}-{'e' * 16}-{'0' * 12}-{longest_region}") <= 63
    for project in ("internal", longest + "c", "ml-", "ML_team"):
        answer = names_in_root(terraform_bin, root, project)
        assert answer.returncode != 0, project
        assert "project must be 2-15 lowercase letters" in answer.stderr, (project, answer.stderr)


@pytest.mark.integration
def test_capacities_autoscaling_would_refuse_are_refused_at_plan_time_and_zero_pauses(
    terraform_bin: str, terraform_copy: Path
) -> None:
    """Application Auto Scaling refuses a minimum above the maximum (RegisterScalableTarget):
    the plan says so before anything changes. Both at 0 is a paused environment."""
    root = terraform_copy / "envs" / "dev"
    (root / "graph_override.tf").write_text('terraform {\n  backend "local" {}\n}\n')
    terraform.init(root)
    refusal = "min_capacity must be a whole number from 0 to max_capacity"
    paused = evaluate(terraform_bin, root, "var.min_capacity", min_capacity="0", max_capacity="0")
    assert (paused.stdout.strip(), paused.stderr) == ("0", ""), paused.stderr
    for low, high in (("3", "2"), ("-1", "2"), ("1.5", "2")):
        refused = evaluate(
            terraform_bin, root, "var.min_capacity", min_capacity=low, max_capacity=high
        )
        # console prints a refused variable's validation error on stderr (exit status 0)
        assert refusal in flat(refused.stderr), refused.stderr


# The service module's inputs without a default, as any root gives them (values a console
# evaluation of the module's locals and variables needs, no AWS call).
SERVICE_MODULE_INPUTS = {
    "name": "onnx-ship-dev",
    "environment": "dev",
    "bucket_name": "bucket",
    "bucket_arn": "arn:aws:s3:::bucket",
    "repository_arn": "arn:aws:ecr:us-east-1:123456789012:repository/onnx-ship-dev",
    "vpc_id": "vpc-1",
    "public_subnet_ids": '["subnet-a", "subnet-b"]',
    "task_subnet_ids": '["subnet-a", "subnet-b"]',
}


@pytest.fixture
def service_module(terraform_copy: Path) -> Path:
    """The service module of a private copy, initialised without a backend."""
    module = terraform_copy / "modules" / "service"
    terraform.init(module, backend=False)
    return module


def sized(
    terraform_bin: str, module: Path, expression: str, cpu: int, memory: int
) -> subprocess.CompletedProcess:
    """`expression` in the service module for a task of `cpu` units and `memory` MiB."""
    return evaluate(
        terraform_bin,
        module,
        expression,
        **SERVICE_MODULE_INPUTS,
        cpu=str(cpu),
        memory=str(memory),
    )


@pytest.mark.integration
@pytest.mark.parametrize(
    ("cpu", "memory", "workers"),
    [(256, 512, 1), (512, 1024, 1), (1024, 2048, 1), (2048, 4096, 2), (4096, 30720, 4)],
)
def test_the_task_runs_one_worker_per_vcpu(
    terraform_bin: str, service_module: Path, cpu: int, memory: int, workers: int
) -> None:
    """uvicorn serves on one core a worker: a task of 2 vCPUs with one worker uses half its
    CPU, and the scaling targets (per vCPU) are never reached. So WEB_CONCURRENCY follows
    the task's CPU, one for a fraction of a vCPU."""
    answer = sized(
        terraform_bin, service_module, 'local.container_environment["WEB_CONCURRENCY"]', cpu, memory
    )
    assert (answer.stdout.strip(), flat(answer.stderr)) == (f'"{workers}"', "")


@pytest.mark.integration
def test_a_task_size_fargate_does_not_run_is_refused_at_plan_time(
    terraform_bin: str, service_module: Path
) -> None:
    """Fargate runs only the CPU and memory pairs of its table; RegisterTaskDefinition
    refuses any other ("No Fargate configuration exists for given values": ECS developer
    guide, "Troubleshoot Amazon ECS task definition invalid CPU or memory errors"), halfway
    through an apply. Every environment's own pair and each row's ends pass."""
    sizes = [
        (int(values["task_cpu"]), int(values["task_memory"]))
        for values in (
            assignments(ENVS / env / "terraform.tfvars") for env in terraform.ENVIRONMENTS
        )
    ]
    sizes += [(256, 2048), (512, 4096), (2048, 16384), (4096, 8192), (8192, 61440), (16384, 32768)]
    for cpu, memory in sizes:
        answer = sized(terraform_bin, service_module, "var.memory", cpu, memory)
        assert (answer.stdout.strip(), flat(answer.stderr)) == (str(memory), ""), (cpu, memory)
    for cpu, memory in (
        (1024, 1024),
        (512, 512),
        (512, 3000),
        (2048, 2048),
        (8192, 17408),
        (300, 1024),
    ):
        refused = sized(terraform_bin, service_module, "var.memory", cpu, memory)
        expected = (
            f"Fargate has no task of {cpu} CPU units with {memory} MiB (task_cpu and task_memory)"
        )
        assert expected in flat(refused.stderr), (cpu, memory, refused.stderr)


# ---------------------------------------------------------------------------
# Tools: fmt, validate, checkov
# ---------------------------------------------------------------------------


@pytest.mark.integration
def test_terraform_files_are_formatted(terraform_bin: str) -> None:
    terraform.fmt_check(TERRAFORM_DIR)


@pytest.mark.integration
@pytest.mark.slow
def test_every_root_and_module_validates(terraform_bin: str, terraform_copy: Path) -> None:
    roots = terraform.roots(terraform_copy)
    # Each validate mostly waits on the provider's schema load: two at a time.
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(terraform.validate, roots))
    checked = [root.relative_to(terraform_copy).as_posix() for root in roots]
    assert checked == [
        "bootstrap",
        "envs/dev",
        "envs/prod",
        *(f"modules/{name}" for name in sorted(MODULES)),
    ]


@pytest.mark.integration
@pytest.mark.slow
def test_checkov_finds_no_failed_check(checkov_command: list[str]) -> None:
    result = subprocess.run(
        [
            *checkov_command,
            "-d",
            str(TERRAFORM_DIR),
            "--framework",
            "terraform",
            "--skip-download",
            "--quiet",
            "--compact",
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [
        f"{check['check_id']} {check['resource']} ({check['file_path']})"
        for item in reports
        for check in item.get("results", {}).get("failed_checks", [])
    ]
    assert not failed, "checkov failed checks:\n" + "\n".join(failed)
    assert result.returncode == 0, result.stderr[-2000:]
    passed = sum(item.get("summary", {}).get("passed", 0) for item in reports)
    assert passed > 100, "checkov scanned almost nothing: is the path right?"


# ---------------------------------------------------------------------------
# pipeline.terraform error messages
# ---------------------------------------------------------------------------


def test_missing_binary_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("TERRAFORM", raising=False)
    with pytest.raises(terraform.TerraformError) as error:
        terraform.fmt_check(TERRAFORM_DIR)
    assert str(error.value) == (
        "terraform is not on PATH: install Terraform 1.11+ "
        "(https://developer.hashicorp.com/terraform/install) and retry"
    )


def test_unknown_environment_names_the_valid_ones() -> None:
    with pytest.raises(
        terraform.TerraformError, match="unknown environment 'staging': use one of dev, prod"
    ):
        terraform.plan("staging")


def test_missing_state_bucket_says_how_to_bootstrap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(terraform.STATE_BUCKET_VARIABLE, raising=False)
    with pytest.raises(
        terraform.TerraformError, match="TF_STATE_BUCKET is not set: run the one-time bootstrap"
    ):
        terraform.init_env("dev")


@pytest.mark.integration
def test_a_failing_command_carries_terraforms_error(terraform_bin: str, tmp_path: Path) -> None:
    (tmp_path / "main.tf").write_text(
        'resource "aws_s3_bucket" "broken" {\n  no_such_argument = 1\n}\n'
    )
    with pytest.raises(terraform.TerraformError) as error:
        terraform.validate(tmp_path)
    message = str(error.value)
    assert message.startswith(
        f"terraform validate failed in {tmp_path} (exit 1): fix the error below"
    )
    assert "no_such_argument" in message


@pytest.mark.integration
def test_unformatted_files_are_named(terraform_bin: str, tmp_path: Path) -> None:
    (tmp_path / "main.tf").write_text("locals {\nx=1\n}\n")
    with pytest.raises(
        terraform.TerraformError,
        match=r"not formatted: run `terraform fmt -recursive .*\(main.tf\)",
    ):
        terraform.fmt_check(tmp_path)


def test_command_line_prints_usage_and_errors(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as usage:
        cli.main(["terraform"])
    assert usage.value.code == 2
    usage_text = " ".join(capsys.readouterr().err.split())
    assert (
        "usage: python -m pipeline terraform [-h] {plan,apply,output,lint,mirror} [environment]"
        in (usage_text)
    )
    assert cli.main(["terraform", "plan"]) == 2
    assert "error: terraform plan needs an environment" in capsys.readouterr().err
    assert cli.main(["terraform", "plan", "qa"]) == 2
    assert "error: unknown environment 'qa'" in capsys.readouterr().err
    monkeypatch.delenv(terraform.STATE_BUCKET_VARIABLE, raising=False)
    assert cli.main(["terraform", "apply", "prod"]) == 2
    assert "error: TF_STATE_BUCKET is not set" in capsys.readouterr().err


def test_the_tests_pin_every_value_an_account_sets_for_itself(tmp_path: Path) -> None:
    """The checklist has users set github_repository, aws_region and availability_zones
    (and TLS names) in both terraform.tfvars; the moto-applied tests then still apply the
    committed configuration in moto's account, because each copy they apply carries
    ACCOUNT_PINS in a *.auto.tfvars that sorts before the test's own."""
    from tests.terraform.conftest import ACCOUNT_PINS, ACCOUNT_PINS_FILE, copy_terraform

    pinned = set(re.findall(r"^([a-z_0-9]+)\s*=", ACCOUNT_PINS, flags=re.M))
    assert {"github_repository", "aws_region", "availability_zones", "certificate_arn"} <= pinned
    copy = copy_terraform(tmp_path / "terraform")
    for root in sorted((copy / "envs").iterdir()):
        declared = set(
            re.findall(r'^variable "([a-z_0-9]+)"', (root / "variables.tf").read_text(), flags=re.M)
        )
        assert pinned <= declared, (root.name, pinned - declared)
        assert (root / ACCOUNT_PINS_FILE).read_text() == ACCOUNT_PINS
        assert min("oidc.auto.tfvars", "tls.auto.tfvars") > ACCOUNT_PINS_FILE


@pytest.mark.integration
def test_a_transition_s3_refuses_is_refused_at_plan_time(
    terraform_bin: str, terraform_copy: Path
) -> None:
    """S3 moves no object to STANDARD_IA in its first 30 days and refuses a lifecycle
    rule that asks it to (S3 API reference, Transition, Days); moto accepts it."""
    module = terraform_copy / "modules" / "storage"
    terraform.init(module, backend=False)
    refusal = "capture_infrequent_access_after_days must be a whole number of 30 or more"
    for days in ("30", "45"):
        accepted = evaluate(
            terraform_bin,
            module,
            "var.capture_infrequent_access_after_days",
            bucket_name="b",
            capture_infrequent_access_after_days=days,
        )
        assert (accepted.stdout.strip(), flat(accepted.stderr)) == (days, "")
    for days in ("29", "0", "30.5"):
        refused = evaluate(
            terraform_bin,
            module,
            "var.capture_infrequent_access_after_days",
            bucket_name="b",
            capture_infrequent_access_after_days=days,
        )
        assert refusal in flat(refused.stderr), (days, refused.stderr)

"""The claims of a GitHub Actions OIDC token, as AWS IAM sees them in a trust policy.

GitHub builds the `sub` claim from a template of claim keys. The default template is
`repo` + `context`: `repo:<owner>/<repo>:<context>`, where the context is
`environment:<name>` for a job that names an environment, `pull_request` for a
pull_request event, else `ref:<ref>`. A repository whose template is customised to
`repo`, `context` and `job_workflow_ref` gets
`repo:<owner>/<repo>:<context>:job_workflow_ref:<owner>/<repo>/<workflow path>@<ref>`.
(GitHub docs, "OpenID Connect": "Example subject claims", "Customizing the subject
claims for an organization or repository".) A repository with immutable subject claims
(on by default for every repository created, renamed or transferred since 2026-07-15) has
its owner's and its own numeric IDs in the `repo` part, `repo:<owner>@<id>/<repo>@<id>`,
even with a customised template; other claims keep the names (GitHub docs, "OpenID
Connect", "Immutable subject claims"). IAM exposes the claims as condition keys
`token.actions.githubusercontent.com:<claim>`; `sub` and `aud` are the ones every
partition evaluates (IAM user guide, "Available keys for AWS OIDC federation").
"""

from __future__ import annotations

from dataclasses import dataclass

ISSUER = "token.actions.githubusercontent.com"
WORKFLOW = ".github/workflows/pipeline.yml"
# The subject template the README's set-up step gives the repository.
CUSTOM_TEMPLATE = ("repo", "context", "job_workflow_ref")
DEFAULT_TEMPLATE = ("repo", "context")


@dataclass(frozen=True)
class Job:
    """One workflow job asking for a token: where it runs and what it names."""

    repository: str  # <owner>/<name>
    ref: str  # refs/heads/<branch>, or refs/pull/<n>/merge for a pull request
    environment: str | None = None
    event: str = "push"
    workflow: str = WORKFLOW
    audience: str = "sts.amazonaws.com"
    # (owner id, repository id) when the repository has immutable subject claims.
    ids: tuple[int, int] | None = None

    @property
    def repo(self) -> str:
        """The `repo` part of the subject."""
        if self.ids is None:
            return self.repository
        owner, name = self.repository.split("/")
        return f"{owner}@{self.ids[0]}/{name}@{self.ids[1]}"

    @property
    def context(self) -> str:
        if self.environment:
            return f"environment:{self.environment}"
        if self.event == "pull_request":
            return "pull_request"
        return f"ref:{self.ref}"

    @property
    def job_workflow_ref(self) -> str:
        return f"{self.repository}/{self.workflow}@{self.ref}"

    def subject(self, template: tuple[str, ...] = CUSTOM_TEMPLATE) -> str:
        values = {
            "repo": self.repo,
            "context": self.context,
            "job_workflow_ref": self.job_workflow_ref,
        }
        parts = []
        for key in template:
            # `context` is the part after the repository in the default subject, unlabelled.
            parts.append(values[key] if key == "context" else f"{key}:{values[key]}")
        return ":".join(parts)

    def condition_keys(self, template: tuple[str, ...] = CUSTOM_TEMPLATE) -> dict[str, str]:
        """The request context IAM evaluates the trust policy against."""
        return {f"{ISSUER}:sub": self.subject(template), f"{ISSUER}:aud": self.audience}

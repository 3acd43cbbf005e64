"""The Bicep in infra/ against the code it deploys: every setting the app and its bindings read
is an app setting of the Function App, the queue is the one the app binds and deduplicates
over the app's window, role assignments are idempotent, and no secret is in infra/.

There is no Bicep compiler here, so the templates are read as text: comments are ignored,
brackets are matched outside strings, and a value is resolved through the vars and params of
its file and the module parameters main.bicep passes. `make check-infra` (checkov) checks the
templates' security settings.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from pathlib import Path

import azure.functions as func
import pytest

from shared import bootstrap
from shared.config import Settings
from shared.entrypoints.local import DISPATCHER_ENV
from tests.conftest import ROOT, SETTINGS
# The app's registered functions: get_functions() can run once per process, and that module runs it.
from tests.test_function_app import functions as registered_functions, setting_name as setting_of

INFRA = ROOT / "infra"
MAIN = INFRA / "main.bicep"
LOCAL_SETTINGS = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]

# Settings the app reads only on the local stack: credentials the managed identity replaces.
# The app refuses each one when NOTIFY_ENVIRONMENT=azure, so the Function App must not set them.
LOCAL_ONLY = {"ACS_ACCESS_KEY", "TABLES_CONNECTION_STRING"}

ACS_EVENT_TYPES = {
    "Microsoft.Communication.EmailDeliveryReportReceived",
    "Microsoft.Communication.SMSDeliveryReportReceived",
    "Microsoft.Communication.EmailEngagementTrackingReportReceived",
    "Microsoft.Communication.SMSReceived",
}


# ------------------------------------------------------------------------------ reading Bicep


def _string_end(text: str, i: int) -> int:
    """Index just past the single-quoted string that opens at ``i`` (escapes and ${...} aware)."""
    j = i + 1
    while j < len(text):
        if text[j] == "\\":
            j += 2
        elif text[j] == "'":
            return j + 1
        elif text.startswith("${", j):
            depth, j = 1, j + 2
            while j < len(text) and depth:
                if text[j] == "'":
                    j = _string_end(text, j)
                    continue
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                j += 1
        else:
            j += 1
    return j


def _blank(buffer: list[str], start: int, end: int) -> None:
    for k in range(start, end):
        if buffer[k] != "\n":
            buffer[k] = " "


@dataclass
class Block:
    """A span of a Bicep file: ``code`` has the comments blanked, ``mask`` the strings too."""

    code: str
    mask: str

    def closing(self, i: int) -> int:
        """Index of the bracket that closes the one at ``i``."""
        pairs = {"{": "}", "[": "]", "(": ")"}
        stack = []
        for j in range(i, len(self.mask)):
            c = self.mask[j]
            if c in pairs:
                stack.append(pairs[c])
            elif stack and c == stack[-1]:
                stack.pop()
                if not stack:
                    return j
        raise AssertionError(f"unbalanced {self.mask[i]!r} at {i}")

    def sub(self, start: int, end: int) -> Block:
        return Block(self.code[start:end], self.mask[start:end])

    def _value_end(self, start: int) -> int:
        """End of the value that starts at ``start``: the end of its line, or past its brackets."""
        depth = 0
        for j in range(start, len(self.mask)):
            c = self.mask[j]
            if c in "{[(":
                depth += 1
            elif c in "}])":
                if depth == 0:
                    return j
                depth -= 1
            elif c == "\n" and depth == 0:
                return j
        return len(self.mask)

    def _entries(self) -> dict[str, tuple[int, int]]:
        """key -> (start, end) of each top-level ``key: value`` of this object."""
        found: dict[str, tuple[int, int]] = {}
        key = re.compile(r"[ \t]*'?([A-Za-z_][\w.]*)'?[ \t]*:[ \t]*")
        i = self.mask.index("{") + 1
        while i < len(self.mask):
            if self.mask[i - 1] == "\n" and (match := key.match(self.code, i)):
                end = self._value_end(match.end())
                found.setdefault(match.group(1), (match.end(), end))
                i = end
            elif self.mask[i] in "{[(":
                i = self.closing(i) + 1
            else:
                i += 1
        return found

    def properties(self) -> dict[str, str]:
        """The top-level ``key: value`` pairs of this object, values as source text."""
        return {key: self.code[start:end].strip() for key, (start, end) in self._entries().items()}

    def child(self, *path: str) -> Block:
        """The object or array at ``path`` below this object."""
        block = self
        for key in path:
            entries = block._entries()
            assert key in entries, f"no {key!r} in {block.code[:60]!r}..."
            start, end = entries[key]
            block = block.sub(start, end)
        return block

    def items(self) -> list[Block]:
        """The objects directly inside this array."""
        objects, i = [], self.mask.index("[") + 1
        while (i := self.mask.find("{", i)) >= 0:
            end = self.closing(i)
            objects.append(self.sub(i, end + 1))
            i = end + 1
        return objects


@dataclass
class Resource:
    symbol: str
    type: str
    body: Block

    @property
    def props(self) -> dict[str, str]:
        return self.body.properties()

    def nested(self, *path: str) -> Block:
        return self.body.child(*path)


@dataclass
class BicepFile:
    path: Path
    text: Block

    @classmethod
    @cache
    def read(cls, path: Path) -> BicepFile:
        text = path.read_text()
        code, mask = list(text), list(text)
        i = 0
        while i < len(text):
            if text.startswith("//", i):
                end = text.find("\n", i)
                end = len(text) if end < 0 else end
                _blank(code, i, end)
                _blank(mask, i, end)
                i = end
            elif text.startswith("/*", i):
                end = text.find("*/", i + 2) + 2
                _blank(code, i, end)
                _blank(mask, i, end)
                i = end
            elif text.startswith("'''", i):
                end = text.find("'''", i + 3) + 3
                _blank(mask, i + 3, end - 3)
                i = end
            elif text[i] == "'":
                end = _string_end(text, i)
                _blank(mask, i + 1, end - 1)
                i = end
            else:
                i += 1
        return cls(path, Block("".join(code), "".join(mask)))

    def resources(self, type_: str | None = None) -> list[Resource]:
        """The resources this file deploys (not the ``existing`` ones it refers to)."""
        found = []
        for match in re.finditer(r"(?m)^resource\s+(\w+)\s+'([^'@]+)@[^']*'(\s+existing)?", self.text.code):
            if match.group(3) or (type_ is not None and match.group(2).lower() != type_.lower()):
                continue
            start = self.text.mask.index("{", match.end())
            found.append(Resource(match.group(1), match.group(2), self.text.sub(start, self.text.closing(start) + 1)))
        return found

    def modules(self) -> dict[str, tuple[str, Block]]:
        """symbol -> (path, body) of each module this file declares."""
        found = {}
        for match in re.finditer(r"(?m)^module\s+(\w+)\s+'([^']+)'", self.text.code):
            start = self.text.mask.index("{", match.end())
            found[match.group(1)] = (match.group(2), self.text.sub(start, self.text.closing(start) + 1))
        return found

    def declared(self, name: str) -> str | None:
        """The literal a ``var`` or a ``param`` default gives ``name``, as source text."""
        match = re.search(rf"(?m)^(?:var\s+{name}\s*=|param\s+{name}\s+\w+\s*=)\s*(.+)$", self.text.code)
        return match.group(1).strip() if match else None

    def output(self, name: str) -> str | None:
        match = re.search(rf"(?m)^output\s+{name}\s+\w+\s*=\s*(.+)$", self.text.code)
        return match.group(1).strip() if match else None


def bicep_files() -> list[BicepFile]:
    return [BicepFile.read(path) for path in sorted(INFRA.rglob("*.bicep"))]


def literal(expression: str) -> str | None:
    """The value of a plain single-quoted Bicep string, else None."""
    if re.fullmatch(r"'(?:[^'\\$]|\\.|\$(?!\{))*'", expression):
        return re.sub(r"\\(.)", r"\1", expression[1:-1])
    return None


def resolve(file: BicepFile, expression: str) -> str:
    """A string or number expression made only of literals and this file's vars and params."""
    expression = expression.strip()
    if (value := literal(expression)) is not None:
        return value
    if re.fullmatch(r"-?\d+", expression):
        return expression
    if re.fullmatch(r"\w+", expression) and (declared := file.declared(expression)) is not None:
        return resolve(file, declared)
    if expression.startswith("'") and expression.endswith("'"):
        return re.sub(r"\$\{\s*(\w+)\s*\}", lambda m: resolve(file, m.group(1)), expression[1:-1])
    raise AssertionError(f"{file.path.name}: cannot resolve {expression!r} to a literal")


def function_app_settings() -> dict[str, tuple[BicepFile, str]]:
    """name -> (file, value expression) of every entry in a Function App's siteConfig.appSettings."""
    settings = {}
    for file in bicep_files():
        for site in file.resources("Microsoft.Web/sites"):
            for entry in site.nested("properties", "siteConfig", "appSettings").items():
                props = entry.properties()
                name = literal(props["name"])
                assert name, f"{file.path.name}: app setting names should be literals, got {props['name']!r}"
                assert name not in settings, f"app setting {name} is defined twice"
                settings[name] = (file, props["value"])
    assert settings, "no Microsoft.Web/sites with siteConfig.appSettings found under infra/"
    return settings


def module_file(symbol: str) -> BicepFile:
    path, _ = BicepFile.read(MAIN).modules()[symbol]
    return BicepFile.read(MAIN.parent / path)


def module_calling(file_name: str) -> tuple[str, dict[str, str]]:
    """The symbol and params of the module in main.bicep that deploys ``modules/<file_name>``."""
    for symbol, (path, body) in BicepFile.read(MAIN).modules().items():
        if Path(path).name == file_name:
            return symbol, body.child("params").properties()
    raise AssertionError(f"main.bicep deploys no {file_name}")


def service_bus_queue(setting: str) -> tuple[BicepFile, Resource]:
    """The queue infra creates under the name the app setting ``setting`` has locally."""
    [(file, queue)] = [
        (f, q)
        for f in bicep_files()
        for q in f.resources("Microsoft.ServiceBus/namespaces/queues")
        if "parent" in q.props and resolve(f, q.props["name"]) == LOCAL_SETTINGS[setting]
    ]
    return file, queue


def notifications_queue() -> tuple[BicepFile, Resource]:
    return service_bus_queue("NOTIFICATIONS_QUEUE")


def iso_duration(value: str) -> timedelta:
    match = re.fullmatch(r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?", value)
    assert match and value not in ("P", "PT"), f"{value!r} is not an ISO 8601 duration"
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


# ------------------------------------------------------------------------------ what the code reads


def settings_the_app_reads() -> set[str]:
    return {field.alias for field in Settings.model_fields.values()}


def settings_the_bindings_read() -> set[str]:
    """%NAME% placeholders in any binding, and each connection as its identity-based setting."""
    names = set()
    for function in registered_functions().values():
        for binding in function.get_bindings_dict()["bindings"]:
            for key, value in binding.items():
                if not isinstance(value, str):
                    continue
                names |= set(re.findall(r"%(\w+)%", value))
                if key == "connection":
                    names.add(f"{value}__fullyQualifiedNamespace")
    return names


def test_every_setting_the_code_reads_is_an_app_setting_of_the_function_app():
    required = (settings_the_app_reads() - LOCAL_ONLY) | settings_the_bindings_read()
    missing = required - function_app_settings().keys()
    assert not missing, f"the Function App's appSettings in infra/ lack {sorted(missing)}"


def test_every_setting_the_code_reads_has_a_local_value():
    required = settings_the_app_reads() | settings_the_bindings_read()
    missing = required - LOCAL_SETTINGS.keys()
    assert not missing, f"local.settings.sample.json lacks {sorted(missing)}"


def test_the_host_storage_and_the_trigger_connect_with_the_identity():
    deployed = function_app_settings().keys()
    assert deployed & {"AzureWebJobsStorage__accountName", "AzureWebJobsStorage__blobServiceUri"}
    assert "AzureWebJobsStorage" not in deployed, "a storage connection string would carry the account key"
    for connection in {b["connection"] for f in registered_functions().values() for b in f.get_bindings_dict()["bindings"] if "connection" in b}:
        assert connection not in deployed, f"{connection} as a plain setting is a connection string; use {connection}__fullyQualifiedNamespace"


def test_local_only_credentials_are_not_deployed():
    assert not LOCAL_ONLY & function_app_settings().keys()


def azure_settings(monkeypatch) -> dict[str, str]:
    """The deployed app settings as the app would get them: literals as written, computed values
    (resource endpoints, module parameters) replaced by a valid stand-in or the app's default."""
    stand_ins = {
        "ACS_ENDPOINT": "https://acs-notify-prod.europe.communication.azure.com",
        "ACS_RESOURCE_ID": "/subscriptions/0/resourceGroups/rg/providers/Microsoft.Communication/communicationServices/acs",
        "EMAIL_SENDERS": "DoNotReply@notify.example.com",
        "SMS_SENDERS": "+18005550100",
        "TABLES_ENDPOINT": "https://stnotifyprod.table.core.windows.net",
        "ATTACHMENTS_CONTAINER_URL": "https://stnotifyprod.blob.core.windows.net/attachments",
        "ServiceBusConnection__fullyQualifiedNamespace": "sb-notify-prod.servicebus.windows.net",
        "ENTRA_TENANT_ID": "11111111-2222-3333-4444-555555555555",
        "ENTRA_AUDIENCES": "api://notify-prod",
        "ENTRA_TOKEN_VERSIONS": "2",
        "PII_HASH_KEY": "yJ3wq0mC4tV8pX1sN6bE9rK2fH5gL7dA0zQ3uW8iO1c=",
        "STATUS_EVENTS_TOPIC_ENDPOINT": "https://evgt-notify-prod.westeurope-1.eventgrid.azure.net/api/events",
    }
    fields = {field.alias: field for field in Settings.model_fields.values()}
    values = {}
    for name, (file, expression) in function_app_settings().items():
        if name not in fields:
            continue
        if (value := literal(expression)) is not None:
            values[name] = value
        elif name in stand_ins:
            values[name] = stand_ins[name]
        else:
            assert not fields[name].is_required(), f"{name} is computed in {file.path.name}: give it a stand-in here"
            default = fields[name].get_default()
            values[name] = "" if default is None else str(default)
    for name in fields:
        monkeypatch.delenv(name, raising=False)
    return values


def test_the_deployed_settings_pass_the_apps_own_checks_for_azure(monkeypatch):
    settings = Settings(**azure_settings(monkeypatch))
    assert settings.environment == "azure"
    assert settings.parsed_dev_keys() == {}
    assert settings.acs_access_key is None and settings.tables_connection_string is None


@pytest.mark.parametrize("name", sorted(LOCAL_ONLY))
def test_the_app_refuses_each_local_only_credential_in_azure(monkeypatch, name):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=name):
        Settings(**azure_settings(monkeypatch), **{name: "c2VjcmV0"})


def test_the_reconcile_schedule_is_a_six_field_cron():
    file, expression = function_app_settings()["RECONCILE_SCHEDULE"]
    assert len(resolve(file, expression).split()) == 6


# ------------------------------------------------------------------------------ the queue


@pytest.mark.parametrize("setting", ["NOTIFICATIONS_QUEUE", "REQUESTS_QUEUE", "DELIVERY_REPORTS_QUEUE"])
def test_each_service_bus_queue_is_the_queue_the_app_binds(setting):
    file, queue = service_bus_queue(setting)

    # The app setting is fed from that queue, not typed a second time.
    app_file, expression = function_app_settings()[setting]
    _, passed = module_calling(app_file.path.name)
    source = re.fullmatch(r"(\w+)\.outputs\.(\w+)", passed[expression])
    assert source, f"main.bicep should pass {expression} from the Service Bus module, got {passed[expression]!r}"
    assert module_file(source.group(1)).path == file.path
    assert file.output(source.group(2)) == f"{queue.symbol}.name"


@pytest.mark.parametrize("setting", ["NOTIFICATIONS_QUEUE", "REQUESTS_QUEUE"])
def test_each_queue_detects_duplicates_over_the_apps_window_and_dead_letters_what_expires(setting):
    file, queue = service_bus_queue(setting)
    props = queue.nested("properties").properties()
    assert props["deadLetteringOnMessageExpiration"] == "true"
    assert props["requiresDuplicateDetection"] == "true"
    window = iso_duration(resolve(file, props["duplicateDetectionHistoryTimeWindow"]))
    assert window == bootstrap.DUPLICATE_DETECTION_WINDOW


def test_the_queue_lock_outlasts_the_slowest_dispatch_attempt():
    file, queue = notifications_queue()
    props = queue.nested("properties").properties()
    lock = iso_duration(resolve(file, props["lockDuration"]))
    app_file, timeout = function_app_settings()["ACS_TIMEOUT_SECONDS"]
    services = bootstrap.Services(Settings(**{**SETTINGS, "ACS_TIMEOUT_SECONDS": resolve(app_file, timeout)}))
    assert services.send_lease < lock <= timedelta(minutes=5)
    assert props["deadLetteringOnMessageExpiration"] == "true"


# ------------------------------------------------------------------------------ identity and secrets


def role_assignments() -> list[tuple[BicepFile, Resource]]:
    return [(f, r) for f in bicep_files() for r in f.resources("Microsoft.Authorization/roleAssignments")]


def test_every_role_assignment_is_named_from_its_scope_principal_and_role():
    assignments = role_assignments()
    assert len(assignments) >= 8
    for file, assignment in assignments:
        where = f"{file.path.name}: {assignment.symbol}"
        name = assignment.props["name"]
        match = re.fullmatch(r"guid\(\s*([^,]+?)\s*,\s*([^,]+?)\s*,\s*([^,()]+?)\s*\)", name)
        assert match, f"{where} should be named guid(scope, principalId, roleDefinitionId), got {name!r}"
        scope, principal, role = match.groups()
        inner = assignment.nested("properties").properties()
        assert scope == f"{assignment.props['scope']}.id", f"{where}: name and scope differ"
        assert principal == inner["principalId"], f"{where}: name and principal differ"
        assert role in inner["roleDefinitionId"], f"{where}: name and role differ"


SERVICE_BUS_DATA_SENDER = "69a216fc-b8fb-44d8-bc22-1f3c2cd27a39"
SERVICE_BUS_DATA_RECEIVER = "4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0"


def assignments_scoped_to(file: BicepFile, symbol: str) -> list[str]:
    """The role definition ids (resolved through the file's vars) of the assignments on ``symbol``."""
    roles = []
    for assignment in file.resources("Microsoft.Authorization/roleAssignments"):
        if assignment.props["scope"] != symbol:
            continue
        expression = assignment.nested("properties").properties()["roleDefinitionId"]
        role = re.search(r",\s*([\w.]+)\s*\)$", expression).group(1)
        if "." in role:  # roles.serviceBusDataSender: a member of the file's roles object
            member = role.split(".", 1)[1]
            role = re.search(rf"(?m)^\s*{member}:\s*'([^']+)'", file.text.code).group(1)
        else:
            role = resolve(file, role)
        roles.append(role)
    return roles


def test_the_apps_listed_in_a_parameter_may_send_to_the_requests_queue_and_to_nothing_else():
    symbol, params = module_calling("requests-queue-senders.bicep")
    assert params["principalIds"] == "requestSenderPrincipalIds"
    assert BicepFile.read(MAIN).declared("requestSenderPrincipalIds") == "[]"
    assert params["requestsQueueName"] == "serviceBus.outputs.requestsQueueName"
    file = module_file(symbol)
    assert [a.props["scope"] for a in file.resources("Microsoft.Authorization/roleAssignments")] == ["requestsQueue"]
    assert assignments_scoped_to(file, "requestsQueue") == [SERVICE_BUS_DATA_SENDER]


def test_the_function_receives_from_the_requests_queue_and_does_not_send_to_it():
    _, params = module_calling("function-roles.bicep")
    assert params["requestsQueueName"] == "serviceBus.outputs.requestsQueueName"
    file = BicepFile.read(INFRA / "modules" / "function-roles.bicep")
    assert assignments_scoped_to(file, "requestsQueue") == [SERVICE_BUS_DATA_RECEIVER]


def test_no_secret_or_key_is_written_read_or_stored_in_infra():
    patterns = re.compile(
        r"AccountKey=|SharedAccessKey=|SharedAccessSignature|DefaultEndpointsProtocol=|InstrumentationKey="
        r"|listKeys\(|listConnectionStrings\(|listSecrets\(|\.listKeys\(",
        re.IGNORECASE,
    )
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted(INFRA.rglob("*"))
        if path.is_file()
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if patterns.search(line)
    ]
    assert not offenders, f"secret-looking values in {offenders}"


def test_service_bus_and_storage_refuse_keys():
    [namespace] = [r for f in bicep_files() for r in f.resources("Microsoft.ServiceBus/namespaces")]
    assert namespace.nested("properties").properties()["disableLocalAuth"] == "true"
    [storage] = [r for f in bicep_files() for r in f.resources("Microsoft.Storage/storageAccounts") if "sku" in r.props]
    props = storage.nested("properties").properties()
    assert props["allowSharedKeyAccess"] == "false"
    assert props["allowBlobPublicAccess"] == "false"
    assert props["minimumTlsVersion"] == "'TLS1_2'"


# ------------------------------------------------------------------------------ delivery reports


def test_delivery_reports_reach_the_batch_trigger_through_its_queue_with_retries_and_a_dead_letter():
    [report_queue_setting] = [
        setting_of(binding["queueName"])
        for f in registered_functions().values()
        for binding in f.get_bindings_dict()["bindings"]
        if binding["type"] == "serviceBusTrigger" and binding.get("cardinality") == func.Cardinality.MANY
    ]
    queue_file, queue = service_bus_queue(report_queue_setting)
    [(file, subscription)] = [(f, r) for f in bicep_files() for r in f.resources("Microsoft.EventGrid/systemTopics/eventSubscriptions")]
    delivery = subscription.nested("properties", "deliveryWithResourceIdentity")
    assert literal(delivery.child("identity").properties()["type"]) == "SystemAssigned"
    assert literal(delivery.child("destination").properties()["endpointType"]) == "ServiceBusQueue"
    target = delivery.child("destination").child("properties").properties()["resourceId"]
    # The destination is the queue the trigger binds, as main.bicep passes it from the Service Bus module.
    existing = re.search(
        rf"(?m)^resource\s+{re.escape(target.removesuffix('.id'))}\s+'Microsoft.ServiceBus/namespaces/queues@[^']*'\s+existing\s*=\s*\{{[^}}]*?\bname:\s*(\w+)",
        file.text.code,
    )
    assert existing, f"{file.path.name}: the destination {target!r} should be an existing queue named by a parameter"
    _, passed = module_calling(file.path.name)
    source = re.fullmatch(r"(\w+)\.outputs\.(\w+)", passed[existing.group(1)])
    assert module_file(source.group(1)).path == queue_file.path
    assert queue_file.output(source.group(2)) == f"{queue.symbol}.name"
    assert literal(subscription.nested("properties").properties()["eventDeliverySchema"]) == "EventGridSchema"

    event_types = subscription.nested("properties", "filter", "includedEventTypes")
    assert set(re.findall(r"'([^']+)'", event_types.code)) == ACS_EVENT_TYPES
    assert "maxDeliveryAttempts" in subscription.nested("properties", "retryPolicy").properties()
    dead_letter = subscription.nested("properties", "deadLetterWithResourceIdentity")
    assert literal(dead_letter.child("identity").properties()["type"]) == "SystemAssigned"
    assert literal(dead_letter.child("deadLetterDestination").properties()["endpointType"]) == "StorageBlob"

    # Reports wait out an outage of the function, and expire into the dead-letter queue.
    props = queue.nested("properties").properties()
    assert props["deadLetteringOnMessageExpiration"] == "true"
    assert iso_duration(resolve(queue_file, props["defaultMessageTimeToLive"])) >= timedelta(days=1)
    # The host renews no lock for a function that receives batches: the lock must last as long as
    # the invocation may.
    hours, minutes, seconds = (int(part) for part in json.loads((ROOT / "host.json").read_text())["functionTimeout"].split(":"))
    timeout = timedelta(hours=hours, minutes=minutes, seconds=seconds)
    assert iso_duration(resolve(queue_file, props["lockDuration"])) >= timeout


def test_the_acs_topic_may_send_to_the_delivery_reports_queue_and_the_function_only_receive_from_it():
    file = BicepFile.read(INFRA / "modules" / "eventgrid-subscription.bicep")
    assert assignments_scoped_to(file, "deliveryReportsQueue") == [SERVICE_BUS_DATA_SENDER]
    _, passed = module_calling(file.path.name)
    assert passed["topicPrincipalId"] == "eventGridTopic.outputs.principalId"

    _, params = module_calling("function-roles.bicep")
    assert params["deliveryReportsQueueName"] == "serviceBus.outputs.deliveryReportsQueueName"
    roles = BicepFile.read(INFRA / "modules" / "function-roles.bicep")
    assert assignments_scoped_to(roles, "deliveryReportsQueue") == [SERVICE_BUS_DATA_RECEIVER]


def test_the_function_app_gets_the_dispatcher_environment_the_local_supervisor_gives_its_workers():
    deployed = function_app_settings()
    for name, value in DISPATCHER_ENV.items():
        assert name in deployed, f"the Function App lacks {name} (see shared/entrypoints/local.py DISPATCHER_ENV)"
        assert literal(deployed[name][1]) == value


# ------------------------------------------------------------------------------ status events


def status_topic() -> tuple[BicepFile, Resource]:
    [(file, topic)] = [(f, r) for f in bicep_files() for r in f.resources("Microsoft.EventGrid/topics")]
    return file, topic


def test_status_events_go_to_a_cloudevents_topic_that_takes_no_keys():
    _, topic = status_topic()
    props = topic.nested("properties").properties()
    assert literal(props["inputSchema"]) == "CloudEventSchemaV1_0"
    assert props["disableLocalAuth"] == "true"


def test_the_function_app_may_send_events_to_that_topic_and_nothing_more():
    topic_file, topic = status_topic()
    [(file, assignment)] = [
        (f, r) for f, r in role_assignments() if "d5a91429-5739-47e2-a06b-3470a27159e7" in f.text.code
        and "eventGridDataSender" in r.nested("properties").properties()["roleDefinitionId"]
    ]
    assert file.path.name == "function-roles.bicep"
    assert assignment.props["scope"] == "statusEventsTopic"
    _, passed = module_calling("function-roles.bicep")
    assert passed["principalId"] == "functionApp.outputs.principalId"
    symbol, _ = module_calling(topic_file.path.name)
    assert passed["statusEventsTopicName"] == f"{symbol}.outputs.name"
    assert topic_file.output("name") == f"{topic.symbol}.name"


def test_the_app_publishes_to_the_topic_endpoint_infra_creates():
    app_file, expression = function_app_settings()["STATUS_EVENTS_TOPIC_ENDPOINT"]
    _, passed = module_calling(app_file.path.name)
    topic_file, topic = status_topic()
    symbol, _ = module_calling(topic_file.path.name)
    assert passed[expression] == f"{symbol}.outputs.endpoint"
    assert topic_file.output("endpoint") == f"{topic.symbol}.properties.endpoint"
    assert literal(function_app_settings()["STATUS_EVENT_SUBSCRIBERS"][1]) == ""


def test_the_status_relay_timer_fires_every_few_seconds_in_azure():
    file, expression = function_app_settings()["STATUS_RELAY_SCHEDULE"]
    seconds, *rest = resolve(file, expression).split()
    assert rest == ["*"] * 5 and seconds.startswith("*/") and int(seconds[2:]) <= 10


def test_an_example_subscription_receives_status_events_in_the_cloudevents_schema_with_a_dead_letter():
    [(file, subscription)] = [(f, r) for f in bicep_files() for r in f.resources("Microsoft.EventGrid/topics/eventSubscriptions")]
    props = subscription.nested("properties").properties()
    assert literal(props["eventDeliverySchema"]) == "CloudEventSchemaV1_0"
    delivery = subscription.nested("properties", "deliveryWithResourceIdentity")
    assert literal(delivery.child("identity").properties()["type"]) == "SystemAssigned"
    assert "maxDeliveryAttempts" in subscription.nested("properties", "retryPolicy").properties()
    assert "deadLetterWithResourceIdentity" in props


def test_dead_letters_on_every_queue_alert_the_operators():
    symbol, params = module_calling("alerts.bicep")
    assert params["requestsQueueName"] == "serviceBus.outputs.requestsQueueName"
    watched = []
    for alert in module_file(symbol).resources("Microsoft.Insights/metricAlerts"):
        for criterion in alert.nested("properties", "criteria", "allOf").items():
            if literal(criterion.properties()["metricName"]) == "DeadletteredMessages":
                watched += re.findall(r"\b(\w+)\b", criterion.child("dimensions").code.split("values")[1])
    assert params["deliveryReportsQueueName"] == "serviceBus.outputs.deliveryReportsQueueName"
    assert {"requestsQueueName", "queueName", "deliveryReportsQueueName"} <= set(watched)

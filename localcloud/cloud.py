"""Run template.yaml on this machine: no AWS account, no Docker.

A moto server on 127.0.0.1 plays S3, DynamoDB, Lambda and Step Functions. The resources, the functions'
environment and the state machine's substitutions come from template.yaml; the state machine is the real ASL
file, executed by moto; a Lambda invoke runs our real handler in this process. The plain AWS CLI and boto3
reach it with --endpoint-url.
"""

import importlib
import io
import json
import logging
import os
import threading
import sys
import time
import traceback
import uuid
import zipfile
from collections import Counter
from contextvars import ContextVar
from pathlib import Path
from urllib.request import Request, urlopen

from botocore.config import Config

from localcloud import template as cfn

ROOT = Path(__file__).resolve().parent.parent
_handlers: dict[str, "LocalFunction"] = {}
_patched = False


class LocalContext:
    """The parts of the Lambda context object that handlers and Powertools read."""

    def __init__(self, function_name: str, memory_mb: int, timeout_s: int):
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = memory_mb
        self.invoked_function_arn = f"arn:aws:lambda:{cfn.REGION}:{cfn.ACCOUNT_ID}:function:{function_name}"
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "localcloud"
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


class LocalFunction:
    def __init__(self, logical_id: str, name: str, handler: str, code_dir: Path, memory_mb: int, timeout_s: int):
        self.logical_id, self.name, self.handler = logical_id, name, handler
        self.code_dir, self.memory_mb, self.timeout_s = code_dir, memory_mb, timeout_s
        self.invocations = 0

    def call(self, event):
        module_name, attribute = self.handler.rsplit(".", 1)
        if str(self.code_dir) not in sys.path:
            sys.path.insert(0, str(self.code_dir))
        handler = getattr(importlib.import_module(module_name), attribute)
        self.invocations += 1
        token = _running.set(self.logical_id)
        try:
            return handler(event, LocalContext(self.name, self.memory_mb, self.timeout_s))
        finally:
            _running.reset(token)


def _lambda_error(error: BaseException) -> bytes:
    """The payload Lambda returns for an unhandled exception: Step Functions matches on errorType."""
    return json.dumps({
        "errorMessage": str(error),
        "errorType": type(error).__name__,
        "stackTrace": traceback.format_tb(error.__traceback__),
    }).encode()


def _patch_moto_lambda():
    """Make moto's Docker-free Lambda run our handlers. moto internals: pinned moto version."""
    global _patched
    if _patched:
        return
    from moto.awslambda_simple.models import LambdaSimpleBackend

    def invoke(self, function_name, qualifier, body, headers, response_headers):
        name = function_name.rsplit(":", 1)[-1] if function_name.startswith("arn:") else function_name
        function = _handlers.get(name)
        if function is None:
            response_headers["x-amz-function-error"] = "Unhandled"
            return json.dumps({"errorType": "ResourceNotFoundException",
                               "errorMessage": f"no local handler for {name}"}).encode()
        event = json.loads(body) if body else {}
        for hook in function_start_hooks:
            hook(headers=headers)
        try:
            result = function.call(event)
        except Exception as error:  # the Lambda runtime reports every exception the same way
            response_headers["x-amz-function-error"] = "Unhandled"
            return _lambda_error(error)
        return json.dumps(result).encode()

    LambdaSimpleBackend.invoke = invoke
    _patched = True


# Called with the Invoke request's headers just before a handler runs (the latency model waits there).
function_start_hooks: list = []

# Which function's handler is running, if any: a context variable, so that the threads a handler starts with the
# context it runs in (streams._Background does) are counted as that function too, as in Lambda.
_running: ContextVar[str | None] = ContextVar("localcloud_function", default=None)


class AwsCalls:
    """Counts the AWS requests our functions (and the workflow engine) make, per service operation, and
    which operations each function made, with the DynamoDB tables they named (to check them against its IAM
    policy: an action allowed on one table is not allowed on another)."""

    def __init__(self):
        self.counts: Counter[str] = Counter()
        self.by_function: dict[str, set[str]] = {}
        self.tables_by_function: dict[str, set[tuple[str, str]]] = {}  # function -> {(operation, table name)}
        self._lock = threading.Lock()

    def __call__(self, model, params=None, **kwargs):
        operation = f"{model.service_model.service_name}.{model.name}"
        function = _running.get()
        tables = set()
        if model.service_model.service_name == "dynamodb" and isinstance(params, dict):  # the request, serialized
            body = json.loads(params.get("body") or b"{}")
            tables = {body["TableName"]} if "TableName" in body else set(body.get("RequestItems") or ())
        with self._lock:
            self.counts[operation] += 1
            if function:
                self.by_function.setdefault(function, set()).add(operation)
                self.tables_by_function.setdefault(function, set()).update((operation, t) for t in tables)

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.counts)


def _one_lock_around(cls, names: tuple[str, ...]):
    """Make these methods of `cls` run one at a time across threads (once per process, however often asked)."""
    if getattr(cls, "_localcloud_locked", False):
        return
    lock = threading.RLock()

    def locked(method):
        def call(self, *args, **kwargs):
            with lock:
                return method(self, *args, **kwargs)
        return call

    for name in names:
        setattr(cls, name, locked(getattr(cls, name)))
    cls._localcloud_locked = True


def _patch_moto_dynamodb():
    """Make moto's DynamoDB item operations atomic, as DynamoDB's are. moto's update_item on a new item first
    stores the bare key and then applies the update, so a read from another thread can see an item with no
    attributes (a state DynamoDB never shows). One lock around item operations closes that window."""
    from moto.dynamodb.exceptions import MockValidationException
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.responses import DynamoHandler

    _one_lock_around(DynamoDBBackend, ("get_item", "put_item", "update_item", "delete_item", "batch_get_item",
                                       "transact_write_items"))
    # DynamoDB refuses an expression string over 4 KB; moto takes any length.
    if getattr(DynamoHandler, "_localcloud_expressions_checked", False):
        return

    def checked(method):
        def check_then_call(self):
            for name in ("UpdateExpression", "ConditionExpression", "ProjectionExpression", "KeyConditionExpression",
                         "FilterExpression"):
                value = self.body.get(name) if isinstance(self.body, dict) else None
                if isinstance(value, str) and len(value.encode()) > 4096:
                    raise MockValidationException(
                        f"Invalid {name}: Expression size has exceeded the maximum allowed size; "
                        f"expression size: {len(value.encode())}")
            return method(self)
        return check_then_call

    for name in ("get_item", "put_item", "update_item", "delete_item", "query", "scan"):
        setattr(DynamoHandler, name, checked(getattr(DynamoHandler, name)))
    DynamoHandler._localcloud_expressions_checked = True


# Connections a kept client may hold open: a load test has 200 calls on the line, each with a Map of parts.
_POOL = 256
# The clients of moto's Step Functions engine, one per (region, service, moto port): see _patch_moto_stepfunctions.
_engine_clients: dict[tuple[str, str, str], object] = {}
_engine_clients_lock = threading.Lock()


def engine_clients() -> list:
    with _engine_clients_lock:
        return list(_engine_clients.values())


def _patch_moto_stepfunctions():
    """Let moto's Step Functions engine keep its Lambda client, as the service keeps its connections. moto makes a
    new boto3 client for every Task state it runs: ~5 ms of CPU each, ten at once when a Map starts, taken from
    the Lambdas running beside it in this process. The client is made from boto3's default session, as moto's
    is, so the request counter and the latency model see its invokes. moto internals: pinned moto version."""
    import boto3
    from moto.stepfunctions.parser.asl.component.common.timeouts.timeout import TimeoutSeconds
    from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils

    if getattr(lambda_eval_utils, "_localcloud_patched", False):
        return

    def boto_client_for(region, service, state_credentials=None):
        port = os.environ["MOTO_PORT"]
        with _engine_clients_lock:
            if (region, service, port) not in _engine_clients:
                # moto's own settings, and a pool for the Map's parallel invokes (and other streams' at once)
                _engine_clients[(region, service, port)] = boto3.client(
                    service, region_name=region, endpoint_url=f"http://localhost:{port}",
                    aws_access_key_id="ak", aws_secret_access_key="sk",
                    config=Config(parameter_validation=False, retries={"max_attempts": 0, "total_max_attempts": 1},
                                  connect_timeout=TimeoutSeconds.DEFAULT_TIMEOUT_SECONDS,
                                  read_timeout=TimeoutSeconds.DEFAULT_TIMEOUT_SECONDS,
                                  max_pool_connections=_POOL))
            return _engine_clients[(region, service, port)]

    lambda_eval_utils.boto_client_for = boto_client_for
    lambda_eval_utils._localcloud_patched = True
    _parse_each_definition_once()


def _parse_each_definition_once():
    """Let moto's Step Functions engine parse a definition once, as the service does when it is created. moto
    parses the whole ASL with ANTLR at every StartExecution: ~75 ms of CPU for ours, holding the one GIL that
    every Lambda and request in this process needs. The syntax tree is only read afterwards, so it is kept; the
    evaluation components built from it hold an execution's state, so each execution still gets its own. Trees
    are kept for the process's life: a local cloud has a handful of definitions. moto internals: pinned moto
    version."""
    from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser
    from moto.stepfunctions.parser.asl.parse.preprocessor import Preprocessor

    parse = AmazonStateLanguageParser.parse
    trees: dict[str, object] = {}
    lock = threading.Lock()

    def parse_once(definition: str):
        with lock:
            tree = trees.get(definition)
        if tree is None:
            program, tree = parse(definition)  # a definition that does not parse raises here, every time
            with lock:
                trees[definition] = tree
            return program, tree
        return Preprocessor().visit(tree), tree

    AmazonStateLanguageParser.parse = staticmethod(parse_once)


def _patch_moto_s3():
    """Make moto's S3 PUTs of an object atomic, as S3's are. Two parts of one answer with the same text are
    written to the same prompt-cache key at once; moto replaces the first object, closing its buffer, while the
    first PUT still reads it for its ETag, and answers 500 ("I/O operation on closed file"). S3 answers both."""
    from moto.s3.responses import S3Response

    _one_lock_around(S3Response, ("_key_response_put",))


def _patch_powertools_metrics():
    """Keep a metric from being lost between functions. Powertools keeps one metric set per process, which in
    Lambda is one function's; here every function shares it, and a flush (serialize, print, clear) running while
    another function adds a metric would clear that metric unprinted. One lock around adds and flushes."""
    from aws_lambda_powertools.metrics.provider.cloudwatch_emf.cloudwatch import AmazonCloudWatchEMFProvider

    _one_lock_around(AmazonCloudWatchEMFProvider, ("add_metric", "flush_metrics"))


class LocalCloud:
    def __init__(self, template_path: Path = ROOT / "template.yaml", overrides: dict[str, str] | None = None):
        self.template = cfn.load(template_path, overrides)
        self.server = None
        self.endpoint = ""
        self.functions: dict[str, LocalFunction] = {}
        self.aws_calls = AwsCalls()
        self._session = None
        self._connect_clients: dict[str, object] = {}
        self._kept_clients: dict[str, object] = {}
        self._connect_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self, port: int = 0) -> "LocalCloud":
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request would bury the output

        os.environ.update({
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": cfn.REGION, "AWS_REGION": cfn.REGION,
        })
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self.server.start()
        host, bound = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{bound}"
        # moto's Step Functions engine calls Lambda through this port; our handlers' clients use the endpoint.
        os.environ["MOTO_PORT"] = str(bound)
        os.environ["AWS_ENDPOINT_URL"] = self.endpoint
        self._post("/moto-api/config", {"stepfunctions": {"execute_state_machine": True},
                                        "lambda": {"use_docker": False}})
        _patch_moto_lambda()
        _patch_moto_dynamodb()
        _patch_moto_stepfunctions()
        _patch_moto_s3()
        _patch_powertools_metrics()
        # Handlers make their clients from boto3's default session: count what they ask AWS for. localcloud's
        # own clients (setup, reports) use a session of their own and are not counted.
        import boto3

        boto3.setup_default_session()
        boto3.DEFAULT_SESSION.events.register("before-call", self.aws_calls)
        with _engine_clients_lock:  # made from an earlier default session: they would count into its cloud
            _engine_clients.clear()
        self._session = boto3.session.Session()
        self._create_resources()
        return self

    def stop(self):
        if self.server:
            self.server.stop()
            self.server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _post(self, path, payload):
        request = Request(self.endpoint + path, data=json.dumps(payload).encode(), method="POST",
                          headers={"Content-Type": "application/json"})
        with urlopen(request, timeout=10) as response:
            response.read()

    def client(self, service: str, config=None):
        return self._session.client(service, endpoint_url=self.endpoint, region_name=cfn.REGION, config=config)

    def connect_client(self, service: str):
        """The client Connect makes its own requests with (invoking a function, fetching a prompt): one per
        service, kept, as Connect keeps its connections. Making a client costs ~5 ms of CPU that no call pays."""
        return self._kept(self._connect_clients, service)

    def kept_client(self, service: str):
        """localcloud's own client for starting runs and reading what they left (reports, checks): one per
        service, kept. Checks made a client per object read, ~5 ms of CPU each, taken from the fifty calls still
        running beside them. Register no handlers on it: `client()` makes a client of your own for that."""
        return self._kept(self._kept_clients, service)

    def _kept(self, clients: dict[str, object], service: str):
        with self._connect_lock:
            if service not in clients:
                clients[service] = self.client(service, Config(max_pool_connections=_POOL))
            return clients[service]

    def connect_clients(self) -> list:
        with self._connect_lock:
            return list(self._connect_clients.values())

    # -- resources from the template ---------------------------------------------------------------------
    def _name(self, logical_id: str) -> str:
        return f"{cfn.STACK_NAME}-{logical_id}".lower()

    def _arn(self, service: str, resource: str) -> str:
        return f"arn:aws:{service}:{cfn.REGION}:{cfn.ACCOUNT_ID}:{resource}"

    def _create_resources(self):
        t = self.template
        s3, ddb = self.client("s3"), self.client("dynamodb")
        for logical_id, resource in t.resources("AWS::S3::Bucket").items():
            name = self._name(logical_id)
            s3.create_bucket(Bucket=name)
            t.physical[logical_id] = {"Ref": name, "Arn": f"arn:aws:s3:::{name}"}
        for logical_id, resource in t.resources("AWS::DynamoDB::Table").items():
            props = resource["Properties"]
            name = self._name(logical_id)
            ddb.create_table(TableName=name, AttributeDefinitions=props["AttributeDefinitions"],
                             KeySchema=props["KeySchema"], BillingMode=props["BillingMode"])
            ttl = props.get("TimeToLiveSpecification")
            if ttl:
                ddb.update_time_to_live(TableName=name, TimeToLiveSpecification=ttl)
            t.physical[logical_id] = {"Ref": name, "Arn": self._arn("dynamodb", f"table/{name}")}
        for logical_id, resource in t.resources("AWS::Logs::LogGroup").items():
            name = f"/aws/vendedlogs/{self._name(logical_id)}"
            t.physical[logical_id] = {"Ref": name, "Arn": self._arn("logs", f"log-group:{name}:*")}
        functions = t.resources("AWS::Serverless::Function")
        for logical_id in functions:  # names and ARNs first: functions may refer to each other
            name = self._name(logical_id)
            t.physical[logical_id] = {"Ref": name, "Arn": self._arn("lambda", f"function:{name}")}
        role = self._create_role()
        for logical_id in t.resources("AWS::Serverless::StateMachine"):
            name = self._name(logical_id)
            arn = self._arn("states", f"stateMachine:{name}")
            t.physical[logical_id] = {"Ref": arn, "Arn": arn, "Name": name}
        environment = self._environment(functions)
        os.environ.update(environment)
        for logical_id in functions:
            self._create_function(logical_id, role, environment)
        for logical_id, resource in t.resources("AWS::Serverless::StateMachine").items():
            self._create_state_machine(logical_id, resource, role)

    def _create_role(self) -> str:
        iam = self.client("iam")
        trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": [
            "lambda.amazonaws.com", "states.amazonaws.com"]}, "Action": "sts:AssumeRole"}]}
        return iam.create_role(RoleName="localcloud", AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]

    def _environment(self, functions) -> dict[str, str]:
        """All functions run in this one process, so their variables must agree: a clash is an error."""
        merged: dict[str, str] = {}
        for logical_id in functions:
            props = self.template.resolve(self.template.function_properties(logical_id))
            for key, value in props.get("Environment", {}).get("Variables", {}).items():
                if key in merged and merged[key] != str(value):
                    raise ValueError(f"environment variable {key} differs between functions; localcloud runs them "
                                     "in one process, so give them one value (Globals) or distinct names")
                merged[key] = str(value)
        return merged

    def _create_function(self, logical_id: str, role: str, environment: dict[str, str]):
        props = self.template.resolve(self.template.function_properties(logical_id))
        name = self.template.physical[logical_id]["Ref"]
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("README", "code runs in-process from " + props["CodeUri"])
        self.client("lambda").create_function(
            FunctionName=name, Runtime=props["Runtime"], Role=role, Handler=props["Handler"],
            Code={"ZipFile": buffer.getvalue()}, Timeout=int(props.get("Timeout", 3)),
            MemorySize=int(props.get("MemorySize", 128)), Environment={"Variables": environment},
        )
        function = LocalFunction(logical_id, name, props["Handler"], self.template.root / props["CodeUri"],
                                 int(props.get("MemorySize", 128)), int(props.get("Timeout", 3)))
        self.functions[logical_id] = function
        _handlers[name] = function

    def _create_state_machine(self, logical_id: str, resource: dict, role: str):
        props = self.template.resolve(resource["Properties"])
        definition = (self.template.root / props["DefinitionUri"]).read_text()
        for key, value in props.get("DefinitionSubstitutions", {}).items():
            definition = definition.replace("${" + key + "}", str(value))
        json.loads(definition)  # a substitution that breaks the JSON fails here, not mid-execution
        self.client("stepfunctions").create_state_machine(
            name=self.template.physical[logical_id]["Name"], definition=definition, roleArn=role,
            type=props.get("Type", "STANDARD"),
        )

    # -- running things ----------------------------------------------------------------------------------
    def physical(self, logical_id: str) -> str:
        return self.template.physical[logical_id]["Ref"]

    def invoke(self, logical_id: str, event) -> dict:
        """Invoke a function through the Lambda API, as `sam local invoke` would."""
        response = self.connect_client("lambda").invoke(FunctionName=self.physical(logical_id),
                                                Payload=json.dumps(event).encode())
        payload = json.loads(response["Payload"].read() or b"null")
        if response.get("FunctionError"):
            raise FunctionError(payload)
        return payload

    def start_execution(self, logical_id: str, payload: dict) -> str:
        return self.kept_client("stepfunctions").start_execution(
            stateMachineArn=self.physical(logical_id), name=f"local-{uuid.uuid4().hex}", input=json.dumps(payload),
        )["executionArn"]

    def wait_execution(self, execution_arn: str, timeout_s: float = 120) -> dict:
        sfn = self.kept_client("stepfunctions")
        deadline = time.monotonic() + timeout_s
        while True:
            described = sfn.describe_execution(executionArn=execution_arn)
            if described["status"] != "RUNNING":
                return described
            if time.monotonic() > deadline:
                raise TimeoutError(f"execution {execution_arn} still running after {timeout_s}s")
            time.sleep(0.02)


class FunctionError(RuntimeError):
    def __init__(self, payload):
        self.payload = payload
        super().__init__(f"{payload.get('errorType')}: {payload.get('errorMessage')}")


"""The TTS server's auth header comes from Secrets Manager or an SSM SecureString, cached, never echoed."""

import uuid

import boto3
import pytest
from botocore.config import Config
from botocore.stub import Stubber

from tts_stream.errors import PermanentSynthesisError, RetryableError
from tts_stream.secrets import read_secret

VALUE = "Bearer s3cr3t-t0ken-value"


def client(service: str):
    return boto3.client(
        service, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing",
        config=Config(retries={"total_max_attempts": 1}),
    )


@pytest.fixture
def secretsmanager():
    sm = client("secretsmanager")
    with Stubber(sm) as stubber:
        yield sm, stubber
        stubber.assert_no_pending_responses()


@pytest.fixture
def ssm():
    parameters = client("ssm")
    with Stubber(parameters) as stubber:
        yield parameters, stubber
        stubber.assert_no_pending_responses()


@pytest.fixture
def name():
    """A fresh secret name: the cache is per process, so tests must not share references."""
    return f"tts/auth-{uuid.uuid4().hex[:8]}"


def secret_answer(name: str, value: str) -> dict:
    return {"ARN": f"arn:aws:secretsmanager:us-east-1:123456789012:secret:{name}-AbCdEf", "Name": name,
            "SecretString": value}


def parameter_answer(name: str, value: str) -> dict:
    return {"Parameter": {"Name": name, "Type": "SecureString", "Value": value, "Version": 1}}


def test_a_secrets_manager_secret_is_read_by_its_name(secretsmanager, name):
    # Given a secret holding the header value
    sm, stubber = secretsmanager
    stubber.add_response("get_secret_value", secret_answer(name, VALUE), {"SecretId": name})

    # When it is read, then its string is the value
    assert read_secret(name, secretsmanager=sm) == VALUE


def test_a_secret_arn_is_passed_as_the_secret_id(secretsmanager, name):
    sm, stubber = secretsmanager
    arn = f"arn:aws:secretsmanager:us-east-1:123456789012:secret:{name}-AbCdEf"
    stubber.add_response("get_secret_value", secret_answer(name, VALUE), {"SecretId": arn})
    assert read_secret(arn, secretsmanager=sm) == VALUE


def test_an_ssm_reference_reads_the_parameter_decrypted(ssm, secretsmanager, name):
    # Given a SecureString parameter, named with the ssm: prefix
    parameters, stubber = ssm
    stubber.add_response("get_parameter", parameter_answer(f"/{name}", VALUE),
                         {"Name": f"/{name}", "WithDecryption": True})

    # When it is read (Secrets Manager has nothing queued: a call there would fail the test)
    value = read_secret(f"ssm:/{name}", secretsmanager=secretsmanager[0], ssm=parameters)

    # Then the decrypted value comes back
    assert value == VALUE


def test_a_second_read_within_minutes_makes_no_call(secretsmanager, name):
    # Given a secret read once
    sm, stubber = secretsmanager
    stubber.add_response("get_secret_value", secret_answer(name, VALUE), {"SecretId": name})
    read_secret(name, secretsmanager=sm)

    # When it is read again (nothing more is queued: a second call would fail the test)
    again = read_secret(name, secretsmanager=sm)

    # Then the cached value is returned
    assert again == VALUE


def test_a_rotated_secret_is_picked_up_once_the_cached_value_is_old(secretsmanager, name):
    # Given a secret read once, then rotated
    sm, stubber = secretsmanager
    stubber.add_response("get_secret_value", secret_answer(name, VALUE), {"SecretId": name})
    stubber.add_response("get_secret_value", secret_answer(name, "Bearer rotated"), {"SecretId": name})
    read_secret(name, secretsmanager=sm)

    # When it is read after the cache's age limit
    rotated = read_secret(name, secretsmanager=sm, max_age_s=0)

    # Then the new value is fetched
    assert rotated == "Bearer rotated"


@pytest.mark.parametrize(
    ("code", "status", "reason"),
    [
        ("ResourceNotFoundException", 400, "does not exist"),
        ("AccessDeniedException", 400, "may not read it"),
        ("DecryptionFailure", 400, "KMS key cannot decrypt"),
        ("InvalidRequestException", 400, "scheduled for deletion"),
    ],
)
def test_a_missing_or_forbidden_secret_is_permanent_naming_the_reference(secretsmanager, name, code, status, reason):
    sm, stubber = secretsmanager
    stubber.add_client_error("get_secret_value", code, "Secrets Manager can't find the specified secret.", status,
                             expected_params={"SecretId": name})
    with pytest.raises(PermanentSynthesisError, match=f"could not read secret '{name}' from Secrets Manager: "
                                                      f".*{reason}.*{code}"):
        read_secret(name, secretsmanager=sm)


def test_a_missing_ssm_parameter_is_permanent_naming_the_reference(ssm, name):
    parameters, stubber = ssm
    stubber.add_client_error("get_parameter", "ParameterNotFound", "", 400,
                             expected_params={"Name": f"/{name}", "WithDecryption": True})
    with pytest.raises(PermanentSynthesisError, match=f"secret 'ssm:/{name}' from SSM Parameter Store: it does "
                                                      "not exist"):
        read_secret(f"ssm:/{name}", ssm=parameters)


@pytest.mark.parametrize(
    ("service", "operation", "code", "status"),
    [
        ("secretsmanager", "get_secret_value", "ThrottlingException", 400),
        ("secretsmanager", "get_secret_value", "InternalServiceError", 500),
        ("ssm", "get_parameter", "ThrottlingException", 400),
        ("ssm", "get_parameter", "InternalServerError", 500),
        ("secretsmanager", "get_secret_value", "SomeNewOutage", 503),
    ],
)
def test_secret_store_throttling_and_5xx_are_retryable(secretsmanager, ssm, name, service, operation, code, status):
    # Given the service is throttling or failing
    clients = {"secretsmanager": secretsmanager, "ssm": ssm}
    stubbed, stubber = clients[service]
    stubber.add_client_error(operation, code, "slow down", status)
    ref = f"ssm:/{name}" if service == "ssm" else name

    # When the secret is read
    # Then the workflow will retry, and the message names the reference and the code
    with pytest.raises(RetryableError, match=f"'{ref}'.*{code}"):
        read_secret(ref, secretsmanager=secretsmanager[0], ssm=ssm[0])


def test_a_failed_refresh_is_not_hidden_by_the_cached_value(secretsmanager, name):
    # Given a cached secret that has since been deleted
    sm, stubber = secretsmanager
    stubber.add_response("get_secret_value", secret_answer(name, VALUE), {"SecretId": name})
    stubber.add_client_error("get_secret_value", "ResourceNotFoundException", "gone", 400)
    read_secret(name, secretsmanager=sm)

    # When the cached value is too old and it is read again
    with pytest.raises(PermanentSynthesisError) as failure:
        read_secret(name, secretsmanager=sm, max_age_s=0)

    # Then the error names the secret but never the value it used to hold
    assert name in str(failure.value)
    assert VALUE not in str(failure.value)
    assert "s3cr3t" not in repr(failure.value.__cause__)


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ({"SecretBinary": VALUE.encode()}, "holds binary data"),
        ({"SecretString": "   "}, "is empty"),
    ],
    ids=["binary", "blank"],
)
def test_an_unusable_secret_is_permanent_without_its_value(secretsmanager, name, answer, problem):
    sm, stubber = secretsmanager
    stubber.add_response("get_secret_value", {"Name": name, **answer}, {"SecretId": name})
    with pytest.raises(PermanentSynthesisError, match=problem) as failure:
        read_secret(name, secretsmanager=sm)
    assert "s3cr3t" not in str(failure.value)


def test_a_reference_too_long_to_be_one_is_cut_short_in_the_message(secretsmanager):
    # Given a "reference" of 100,000 characters, which Secrets Manager refuses
    sm, stubber = secretsmanager
    stubber.add_client_error("get_secret_value", "ValidationException", "SecretId is too long", 400)

    # When it is read, then the failure quotes as much of it as a real reference can hold, not all of it
    with pytest.raises(PermanentSynthesisError, match="could not read secret 'xxx") as failure:
        read_secret("x" * 100_000, secretsmanager=sm)
    assert len(str(failure.value)) < 1300


@pytest.mark.parametrize("ref", ["", "   ", "ssm:"])
def test_an_empty_reference_is_permanent(ref):
    with pytest.raises(PermanentSynthesisError, match="no secret reference"):
        read_secret(ref)


def test_a_secret_arn_names_the_region_it_is_read_in(cloud):
    # Given a secret in another region than the function's (moto keeps each region's secrets apart)
    name = f"tts/auth-{uuid.uuid4().hex[:8]}"
    elsewhere = boto3.client("secretsmanager", endpoint_url=cloud.endpoint, region_name="eu-west-2")
    arn = elsewhere.create_secret(Name=name, SecretString=VALUE)["ARN"]

    # When it is read by its ARN, then it is found there; by its bare name, here, it does not exist
    assert read_secret(arn) == VALUE
    with pytest.raises(PermanentSynthesisError, match="does not exist"):
        read_secret(name)


def test_an_unreachable_secret_store_is_retryable():
    # Nothing listens on port 9 of 127.0.0.1: the connection is refused
    store = boto3.client("secretsmanager", endpoint_url="http://127.0.0.1:9", region_name="us-east-1",
                         aws_access_key_id="testing", aws_secret_access_key="testing",
                         config=Config(retries={"total_max_attempts": 1}))
    with pytest.raises(RetryableError, match="EndpointConnectionError, try again"):
        read_secret(f"tts/auth-{uuid.uuid4().hex[:8]}", secretsmanager=store)

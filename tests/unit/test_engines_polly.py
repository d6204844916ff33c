"""The Polly engine against a real boto3 client whose answers come from botocore's Stubber, carrying real speech.

The Stubber checks every request parameter exactly, so these tests also pin what we send to Polly.
"""

import audioop
import io

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError
from botocore.response import StreamingBody
from botocore.stub import Stubber
from urllib3.exceptions import ReadTimeoutError as URLLib3ReadTimeoutError

from tts_stream import config, pipeline
from tts_stream.audio import read_connect_wav, to_connect_wav
from tts_stream.engines import POLLY_MAX_CHARS, EspeakEngine, PollyEngine, get_engine
from tts_stream.errors import InvalidInput, PermanentSynthesisError, RetryableError

TEXT = "Your order shipped this morning."


@pytest.fixture(scope="module")
def pcm8k() -> bytes:
    """Real speech as Polly sends it for OutputFormat pcm at 8000 Hz: raw signed 16-bit little-endian mono."""
    speech = EspeakEngine().synthesize(TEXT, "en-us")
    converted, _ = audioop.ratecv(speech.pcm16, 2, 1, speech.sample_rate, 8000, None)
    return converted


def polly_client():
    """A real Polly client; no retries inside it, so each fault is seen once."""
    return boto3.client(
        "polly", region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing",
        config=Config(retries={"total_max_attempts": 1}),
    )


@pytest.fixture
def polly():
    """A Polly client and its Stubber; every answer queued must have been asked for."""
    client = polly_client()
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


def audio_response(pcm: bytes) -> dict:
    return {"AudioStream": StreamingBody(io.BytesIO(pcm), len(pcm)), "ContentType": "audio/pcm",
            "RequestCharacters": len(TEXT)}


def request(text: str = TEXT, voice: str = "Joanna", engine: str = "neural") -> dict:
    return {"Text": text, "TextType": "text", "OutputFormat": "pcm", "SampleRate": "8000", "VoiceId": voice,
            "Engine": engine}


def test_polly_speaks_8khz_pcm_that_becomes_a_connect_wav(polly, pcm8k):
    # Given Polly answers the exact request we expect with real 8 kHz speech
    client, stubber = polly
    stubber.add_response("synthesize_speech", audio_response(pcm8k), request())

    # When a part is synthesized
    speech = PollyEngine(client).synthesize(TEXT, "Joanna")

    # Then the speech is Polly's audio, untouched, at 8000 Hz, and encodes to a Connect WAV of the same length
    assert speech.sample_rate == 8000
    assert speech.pcm16 == pcm8k
    wav = read_connect_wav(to_connect_wav(speech.pcm16, speech.sample_rate))
    assert wav.frames == len(pcm8k) // 2


def test_polly_engine_type_is_sent_as_configured(polly, pcm8k):
    # Given the standard engine and a Korean voice
    client, stubber = polly
    stubber.add_response("synthesize_speech", audio_response(pcm8k), request("안녕하세요.", "Seoyeon", "standard"))

    # When a part is synthesized
    speech = PollyEngine(client, engine_type="standard").synthesize("안녕하세요.", "Seoyeon")

    # Then the request named that engine and voice (the Stubber checked every parameter)
    assert speech.pcm16 == pcm8k


def test_ssml_in_the_text_is_sent_as_plain_text(polly, pcm8k):
    # Given text that would be a ten-second pause if Polly read it as SSML
    client, stubber = polly
    text = '<speak>Hello <break time="10s"/> world</speak>'
    stubber.add_response("synthesize_speech", audio_response(pcm8k), request(text))

    sent = []
    client.meta.events.register("before-parameter-build.polly.SynthesizeSpeech",
                                lambda params, **kwargs: sent.append(dict(params)))

    # When it is synthesized
    PollyEngine(client).synthesize(text, "Joanna")

    # Then it went to Polly unchanged, as plain text: markup is spoken, never obeyed
    assert [(params["Text"], params["TextType"]) for params in sent] == [(text, "text")]


def test_text_of_exactly_3000_characters_is_sent(polly, pcm8k):
    # Given a part at Polly's billing limit
    client, stubber = polly
    text = "a" * POLLY_MAX_CHARS
    stubber.add_response("synthesize_speech", audio_response(pcm8k), request(text))

    # When it is synthesized, then Polly is asked
    assert PollyEngine(client).synthesize(text, "Joanna").pcm16 == pcm8k


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a" * (POLLY_MAX_CHARS + 1), "text has 3001 characters; Polly takes at most 3000"),
        ("", "text is empty"),
        ("   \n", "text is empty"),
    ],
    ids=["over-3000-chars", "empty", "whitespace"],
)
def test_unspeakable_text_is_refused_without_calling_polly(polly, text, message):
    # Given a Stubber with no answer queued: any call to Polly would fail the test with a Stubber error
    client, _ = polly

    # When the part is synthesized
    # Then it fails for good before any request
    with pytest.raises(PermanentSynthesisError, match=message):
        PollyEngine(client).synthesize(text, "Joanna")


@pytest.mark.parametrize("voice", ["", "Joanna<break/>", "../x"])
def test_a_voice_that_cannot_be_a_polly_voice_id_is_refused_without_a_call(polly, voice):
    client, _ = polly
    with pytest.raises(PermanentSynthesisError, match="is not a Polly voice id"):
        PollyEngine(client).synthesize(TEXT, voice)


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("ThrottlingException", 400),
        ("ServiceFailureException", 500),
        ("ServiceUnavailableException", 503),
        ("SomethingNewAndBroken", 502),
    ],
)
def test_polly_throttling_and_5xx_are_retryable(polly, code, status):
    # Given Polly answers with a transient error
    client, stubber = polly
    stubber.add_client_error("synthesize_speech", code, "Rate exceeded", status, expected_params=request())

    # When a part is synthesized
    # Then the workflow will retry it, and the error names what happened
    with pytest.raises(RetryableError, match=code):
        PollyEngine(client).synthesize(TEXT, "Joanna")


@pytest.mark.parametrize(
    ("code", "status", "reason"),
    [
        ("TextLengthExceededException", 400, "longer than Polly accepts"),
        ("InvalidSsmlException", 400, "invalid SSML"),
        ("InvalidSampleRateException", 400, "PCM at 8000 Hz"),
        ("EngineNotSupportedException", 400, "voice 'Joanna' is not available on the neural engine"),
        ("LexiconNotFoundException", 404, "lexicon"),
        ("MarksNotSupportedForFormatException", 400, "speech marks"),
        ("ValidationException", 400, "check that voice 'Joanna' exists"),
        ("LanguageNotSupportedException", 400, "does not support the requested language"),
        ("AccessDeniedException", 403, "polly:SynthesizeSpeech"),
    ],
)
def test_refusals_are_permanent_and_say_what_was_wrong_without_the_text(polly, code, status, reason):
    # Given Polly refuses the request, quoting the start of the text as a validation message may
    client, stubber = polly
    echo = f"Value '{TEXT[:20]}...' at 'text' failed to satisfy constraint"
    stubber.add_client_error("synthesize_speech", code, echo, status, expected_params=request())

    # When a part is synthesized
    with pytest.raises(PermanentSynthesisError) as failure:
        PollyEngine(client).synthesize(TEXT, "Joanna")

    # Then it fails for good with a reason and the code, and the caller's words are not in the message
    message = str(failure.value)
    assert reason in message
    assert code in message
    assert "order shipped" not in message


def test_a_refusal_repeating_the_text_unquoted_keeps_polly_detail_without_the_text(polly):
    # Given Polly's message repeats the whole text, outside quotes, amid a long explanation
    client, stubber = polly
    polly_says = f"Unable to synthesize {TEXT} with the requested settings. " + "Details follow. " * 30
    stubber.add_client_error("synthesize_speech", "ValidationException", polly_says, 400, expected_params=request())

    # When a part is synthesized
    with pytest.raises(PermanentSynthesisError) as failure:
        PollyEngine(client).synthesize(TEXT, "Joanna")

    # Then Polly's words stay, the caller's words become <text>, and the detail is cut to 200 characters
    message = str(failure.value)
    detail = message.split("Polly says: ", 1)[1]
    assert detail.startswith("Unable to synthesize <text> with the requested settings.")
    assert "order shipped" not in message
    assert len(detail) == 200


def test_an_unknown_voice_names_the_voice_and_keeps_polly_detail(polly):
    # Given Polly's answer to a misspelt voice id
    client, stubber = polly
    polly_says = "1 validation error detected: Value 'Joana' at 'voiceId' failed to satisfy constraint"
    stubber.add_client_error("synthesize_speech", "ValidationException", polly_says, 400,
                             expected_params=request(voice="Joana"))

    # When a part is synthesized with it
    with pytest.raises(PermanentSynthesisError) as failure:
        PollyEngine(client).synthesize(TEXT, "Joana")

    # Then the message says which voice and which field Polly objected to
    assert "voice 'Joana'" in str(failure.value)
    assert "Value 'Joana' at 'voiceId'" in str(failure.value)


@pytest.mark.parametrize(
    "fault",
    [
        ReadTimeoutError(endpoint_url="https://polly.us-east-1.amazonaws.com/v1/speech"),
        ConnectTimeoutError(endpoint_url="https://polly.us-east-1.amazonaws.com/v1/speech"),
        EndpointConnectionError(endpoint_url="https://polly.us-east-1.amazonaws.com/v1/speech"),
    ],
    ids=["read-timeout", "connect-timeout", "connection-refused"],
)
def test_timeouts_and_connection_failures_are_retryable(fault):
    # Given a real client whose HTTP layer fails as the network would (no Stubber: the request is really built)
    client = polly_client()

    def network_fails(request, **kwargs):
        raise fault

    client.meta.events.register("before-send.polly.SynthesizeSpeech", network_fails)

    # When a part is synthesized
    # Then the workflow will retry it
    with pytest.raises(RetryableError, match="Polly request failed"):
        PollyEngine(client).synthesize(TEXT, "Joanna")


def test_audio_stream_stalling_mid_read_is_retryable(polly, pcm8k):
    # Given Polly's headers arrive but its audio stream times out while being read
    client, stubber = polly

    class StallingStream(io.BytesIO):
        def read(self, *args):
            raise URLLib3ReadTimeoutError(None, "https://polly.us-east-1.amazonaws.com", "Read timed out.")

    response = audio_response(pcm8k)
    response["AudioStream"] = StreamingBody(StallingStream(), len(pcm8k))
    stubber.add_response("synthesize_speech", response, request())

    # When a part is synthesized
    # Then the workflow will retry it
    with pytest.raises(RetryableError, match="Read timeout"):
        PollyEngine(client).synthesize(TEXT, "Joanna")


def test_empty_audio_from_polly_is_a_permanent_failure(polly):
    client, stubber = polly
    stubber.add_response("synthesize_speech", audio_response(b""), request())
    with pytest.raises(PermanentSynthesisError, match="Polly returned no audio"):
        PollyEngine(client).synthesize(TEXT, "Joanna")


def test_audio_ending_mid_sample_is_retryable_never_a_part(polly, pcm8k):
    # Given Polly's stream ends one byte into a 16-bit sample (a stream cut short)
    client, stubber = polly
    stubber.add_response("synthesize_speech", audio_response(pcm8k[:1001]), request())

    # When a part is synthesized, then the workflow will try again rather than keep a clipped part
    with pytest.raises(RetryableError, match=r"ended mid-sample \(1001 bytes\)"):
        PollyEngine(client).synthesize(TEXT, "Joanna")


@pytest.mark.parametrize("rate", [22050, 24000, "8000"])
def test_a_pcm_rate_polly_does_not_offer_is_refused_when_the_engine_is_built(rate):
    with pytest.raises(InvalidInput, match=f"Polly PCM sample rate {rate!r} is not one of 8000, 16000"):
        PollyEngine(polly_client(), sample_rate=rate)


def test_get_engine_builds_polly_from_settings_without_calling_aws():
    # Given settings choosing the generative engine
    settings = config.load({"POLLY_ENGINE": "generative", "AWS_REGION": "eu-west-2"})

    # When the engine is built
    engine = get_engine("polly", settings)

    # Then it speaks 8 kHz PCM on that engine, with a default English voice that engine has
    assert engine.name == "polly"
    assert engine.identity() == {"engine_type": "generative", "sample_rate": "8000"}
    assert engine.default_voice("en") == "Joanna"


@pytest.mark.parametrize("engine_type, english, korean", [("standard", "Joanna", "Seoyeon"),
                                                          ("neural", "Joanna", "Seoyeon"),
                                                          ("generative", "Joanna", None),
                                                          ("long-form", "Danielle", None)])
def test_each_engine_type_defaults_to_voices_it_has(engine_type, english, korean):
    # Polly refuses a voice on an engine it was not made for: Joanna has no long-form voice, and neither
    # long-form nor generative has a Korean one (every part would fail on a live call)
    engine = PollyEngine(polly_client(), engine_type=engine_type)
    assert engine.default_voice("en") == english
    if korean:
        assert engine.default_voice("ko") == korean
    else:
        with pytest.raises(InvalidInput, match=f"Polly's {engine_type} engine has no Korean voice: set PollyEngine "
                                               "to neural or standard"):
            engine.default_voice("ko")


def test_a_korean_answer_on_an_engine_without_a_korean_voice_is_refused_when_planned():
    # Given Polly's long-form engine, and no Korean voice configured
    settings = config.load({"TTS_ENGINE": "polly", "POLLY_ENGINE": "long-form", "AWS_REGION": "us-east-1"})

    # When a Korean answer is split into parts (the plan, before any part is spoken), then it is refused; an
    # English one is planned in the engine's English voice
    with pytest.raises(InvalidInput, match="Polly's long-form engine has no Korean voice"):
        pipeline.split_answer(settings, "주문하신 상품은 내일 도착합니다.", "", "auto")
    assert pipeline.split_answer(settings, "Your order arrives tomorrow.", "", "auto").voice == "Danielle"


def test_get_engine_refuses_an_unknown_polly_engine_naming_the_setting():
    settings = config.load({"POLLY_ENGINE": "turbo"})
    with pytest.raises(InvalidInput, match="Polly engine 'turbo' is not one of standard, neural, long-form, "
                                           "generative \\(setting POLLY_ENGINE\\)"):
        get_engine("polly", settings)


def test_default_voice_for_an_unknown_language_is_invalid_input():
    with pytest.raises(InvalidInput, match="no default polly voice for language 'fr': use one of en, ko"):
        PollyEngine().default_voice("fr")

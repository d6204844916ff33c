"""Read template.yaml the way CloudFormation would, for the parts localcloud runs.

Only what the template uses is supported (Ref, GetAtt, Sub, If, Not, And, Or, Equals, Join, Select); anything else
raises, so a template change that localcloud cannot honour fails loudly instead of running something else.
"""

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ACCOUNT_ID = "123456789012"
REGION = "us-east-1"
STACK_NAME = "connect-tts-stream"
NO_VALUE = object()


class _CfnLoader(yaml.SafeLoader):
    pass


def _tag(name):
    def construct(loader, node):
        if isinstance(node, yaml.ScalarNode):
            value = loader.construct_scalar(node)
            if name == "GetAtt":
                value = value.split(".", 1)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)
        key = "Ref" if name == "Ref" else f"Fn::{name}"
        return {key: value}
    return construct


for _name in ("Ref", "GetAtt", "Sub", "If", "Not", "Equals", "Join", "Select", "Split", "And", "Or",
              "FindInMap", "Base64", "GetAZs", "ImportValue", "Condition"):
    _CfnLoader.add_constructor(f"!{_name}", _tag(_name))


@dataclass
class Template:
    path: Path
    body: dict
    parameters: dict[str, str] = field(default_factory=dict)
    # logical id -> {"Ref": physical name, "Arn": arn, ...} filled as localcloud creates resources
    physical: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.path.parent

    def resources(self, type_name: str) -> dict[str, dict]:
        return {k: v for k, v in self.body["Resources"].items() if v["Type"] == type_name}

    def condition(self, name: str) -> bool:
        return bool(self.resolve(self.body.get("Conditions", {})[name]))

    def function_properties(self, logical_id: str) -> dict:
        """A function's properties with the template's Globals merged in, as SAM does."""
        merged = dict(self.body.get("Globals", {}).get("Function", {}))
        own = self.body["Resources"][logical_id]["Properties"]
        for key, value in own.items():
            if key == "Environment":
                variables = dict(merged.get("Environment", {}).get("Variables", {}))
                variables.update(value.get("Variables", {}))
                merged["Environment"] = {"Variables": variables}
            else:
                merged[key] = value
        return merged

    def resolve(self, value):
        """Evaluate intrinsic functions against parameters and the physical resources created so far."""
        if isinstance(value, list):
            items = [self.resolve(v) for v in value]
            return [v for v in items if v is not NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            (key, arg), = value.items()
            if key == "Ref":
                return self._ref(arg)
            if key == "Fn::GetAtt":
                logical_id, attribute = arg
                return self._physical(logical_id)[attribute]
            if key == "Fn::Sub":
                return self._sub(arg)
            if key == "Fn::If":
                name, when_true, when_false = arg
                return self.resolve(when_true if self.condition(name) else when_false)
            if key == "Fn::Not":
                return not self.resolve(arg[0])
            if key == "Condition":
                return self.condition(arg)
            if key == "Fn::And":
                return all(self.resolve(a) for a in arg)
            if key == "Fn::Or":
                return any(self.resolve(a) for a in arg)
            if key == "Fn::Equals":
                left, right = (self.resolve(a) for a in arg)
                return str(left) == str(right)
            if key == "Fn::Join":
                separator, parts = arg
                return separator.join(str(p) for p in self.resolve(parts))
            if key == "Fn::Select":
                index, items = arg
                return self.resolve(items)[int(self.resolve(index))]
            if key.startswith("Fn::"):
                raise ValueError(f"localcloud does not support {key} in {self.path.name}")
        resolved = {k: self.resolve(v) for k, v in value.items()}
        return {k: v for k, v in resolved.items() if v is not NO_VALUE}

    def _ref(self, name):
        pseudo = {"AWS::Region": REGION, "AWS::AccountId": ACCOUNT_ID, "AWS::StackName": STACK_NAME,
                  "AWS::Partition": "aws", "AWS::URLSuffix": "amazonaws.com", "AWS::NoValue": NO_VALUE}
        if name in pseudo:
            return pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        return self._physical(name)["Ref"]

    def _physical(self, logical_id):
        if logical_id not in self.physical:
            raise KeyError(f"{logical_id} is referenced in {self.path.name} but localcloud has not created it")
        return self.physical[logical_id]

    def _sub(self, arg):
        text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], self.resolve(arg[1]))

        def replace(match):
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in variables:
                return str(variables[name])
            if "." in name:
                logical_id, attribute = name.split(".", 1)
                return str(self._physical(logical_id)[attribute])
            return str(self._ref(name))

        return re.sub(r"\$\{([^}]+)\}", replace, text)


def load(path: Path, overrides: dict[str, str] | None = None) -> Template:
    body = yaml.load(Path(path).read_text(), Loader=_CfnLoader)
    declared = body.get("Parameters", {})
    parameters = {name: str(spec.get("Default", "")) for name, spec in declared.items()}
    for name, value in (overrides or {}).items():
        if name not in declared:
            raise ValueError(f"parameter {name} is not declared in {Path(path).name}; known: {', '.join(declared)}")
        check_parameter(name, declared[name], value)
        parameters[name] = value
    return Template(Path(path), body, parameters)


def check_parameter(name: str, spec: dict, value: str) -> None:
    """Refuse a value as CloudFormation would (AllowedValues, AllowedPattern, MinValue/MaxValue for a Number,
    MinLength/MaxLength for a String), so a value rehearsed here does not fail `sam deploy`."""
    allowed = spec.get("AllowedValues")
    if allowed and value not in [str(a) for a in allowed]:
        raise ValueError(f"parameter {name}={value} is not allowed; use one of {', '.join(map(str, allowed))}")
    pattern = spec.get("AllowedPattern")
    if pattern is not None and not re.fullmatch(pattern, value):
        raise ValueError(f"parameter {name}={value!r} does not match its AllowedPattern {pattern}")
    if spec.get("Type") == "Number":
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"parameter {name}={value!r} is not a number") from None
        if "MinValue" in spec and number < float(spec["MinValue"]):
            raise ValueError(f"parameter {name}={value} is less than its MinValue {spec['MinValue']}")
        if "MaxValue" in spec and number > float(spec["MaxValue"]):
            raise ValueError(f"parameter {name}={value} is greater than its MaxValue {spec['MaxValue']}")
    if "MinLength" in spec and len(value) < int(spec["MinLength"]):
        raise ValueError(f"parameter {name} is shorter than its MinLength {spec['MinLength']}")
    if "MaxLength" in spec and len(value) > int(spec["MaxLength"]):
        raise ValueError(f"parameter {name} is longer than its MaxLength {spec['MaxLength']}")


def parse_overrides(items: list[str]) -> dict[str, str]:
    """SAM's `--parameter-overrides Key=Value ...` (also `ParameterKey=K,ParameterValue=V`)."""
    overrides = {}
    for item in items:
        match = re.fullmatch(r"ParameterKey=([^,]+),ParameterValue=(.*)", item) or re.fullmatch(r"([^=]+)=(.*)", item)
        if not match:
            raise ValueError(f"parameter override {item!r} is not Key=Value")
        overrides[match.group(1)] = match.group(2)
    return overrides

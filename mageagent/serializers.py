from __future__ import annotations

from functools import cache
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers


@cache
def _shared_fields(cls: type[serializers.Serializer]) -> Any:
    prototype = cls()
    return serializers.Serializer.fields.func(prototype)  # type: ignore[attr-defined]


class SharedFieldsMixin:
    """One set of fields per serializer class, built once per process.

    DRF deep-copies a serializer's declared fields for every instance (each field is
    constructed again), which was a fifth of a `POST /tasks`'s CPU. Our serializers never
    change their fields per instance and keep no per-request state in them (validation
    state lives on the serializer instance; `validate_<field>` runs on it), so every
    instance shares the fields bound to a prototype of its class."""

    @property
    def fields(self) -> Any:
        return _shared_fields(type(self))  # type: ignore[arg-type]  # classes hash by identity


class StrictSerializer(SharedFieldsMixin, serializers.Serializer):
    """Rejects unknown fields: a typo in a request body is a 400, never silently ignored."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(data.keys() - self.fields.keys())
            if unknown:
                raise serializers.ValidationError({name: ["unknown field"] for name in unknown})
        return super().to_internal_value(data)


class StrictCharField(serializers.CharField):
    """A string, never a number or boolean quietly turned into one."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return str(super().to_internal_value(data))


@extend_schema_field(OpenApiTypes.OBJECT)
class JsonObjectField(serializers.JSONField):
    """A JSON object sent as the text of a form field (multipart); anything else is a 400."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(binary=True, **kwargs)

    def to_internal_value(self, data: Any) -> Any:
        value = super().to_internal_value(data)
        if not isinstance(value, dict):
            self.fail("not_an_object")
        return value

    default_error_messages = {"not_an_object": "must be a JSON object"}


class StrictIntegerField(serializers.IntegerField):
    """An integer in JSON, never a string or a boolean quietly turned into one."""

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, (str, bool)):
            self.fail("invalid")
        return int(super().to_internal_value(data))


class StrictFloatField(serializers.FloatField):
    """A number in JSON, never a string or a boolean quietly turned into one."""

    def to_internal_value(self, data: Any) -> float:
        if isinstance(data, (str, bool)):
            self.fail("invalid")
        return float(super().to_internal_value(data))


class StrictBooleanField(serializers.BooleanField):
    """true or false in JSON, never "yes", 1 or "true"."""

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


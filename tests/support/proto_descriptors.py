"""Compare imgclf's gRPC messages with their published definitions: names, numbers, types, enum values."""

from __future__ import annotations

from imgclf.service.protocols.grpc import messages


def same_fields(ours, reference) -> list[str]:
    """Return what differs between a message of ours and its published definition (fields we have, nested)."""
    problems = []
    if ours.full_name != reference.full_name:
        problems.append(f"{ours.full_name} != {reference.full_name}")
    for field in ours.fields:
        published = reference.fields_by_name.get(field.name)
        if published is None:
            problems.append(f"{ours.full_name}.{field.name} is not published")
            continue
        if (field.number, field.type, field.is_repeated) != (published.number, published.type, published.is_repeated):
            problems.append(f"{ours.full_name}.{field.name}: {(field.number, field.type, field.is_repeated)} "
                            f"!= {(published.number, published.type, published.is_repeated)}")
        if field.message_type is not None and field.message_type.full_name != published.message_type.full_name:
            problems.append(f"{ours.full_name}.{field.name}: {field.message_type.full_name}")
    for nested in ours.nested_types:
        problems += same_fields(nested, reference.nested_types_by_name[nested.name])
    for enum in ours.enum_types:
        problems += same_values(enum, reference.enum_types_by_name[enum.name])
    return problems


def same_values(ours, reference) -> list[str]:
    return [f"{ours.full_name}.{value.name} = {value.number}" for value in ours.values
            if reference.values_by_name.get(value.name) is None
            or reference.values_by_name[value.name].number != value.number]


def check_file(name: str, published: dict) -> None:
    """Check every message and enum of our file ``name`` against ``published`` {full name: descriptor}."""
    ours = messages.pool().FindFileByName(name)
    problems = []
    for message in ours.message_types_by_name.values():
        problems += same_fields(message, published[message.full_name])
    for enum in ours.enum_types_by_name.values():
        problems += same_values(enum, published[enum.full_name])
    assert not problems, problems

"""`with_structured_output` for the three methods LangChain names.

"json_schema" and "json_mode" bind `response_format`: the chat model sends the call through the SDK's structured
output (native where the backend constrains its output, else schema in the prompt, validate, re-ask), and the parsed
value travels in the message's `additional_kwargs["parsed"]`. "function_calling" binds the schema as the one tool the
model must call and parses the call's arguments.
"""

from __future__ import annotations

from collections.abc import Mapping
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.exceptions import OutputParserException
from langchain_core.messages import AIMessage
from langchain_core.output_parsers import JsonOutputKeyToolsParser, PydanticToolsParser
from langchain_core.runnables import Runnable, RunnableLambda, RunnableMap, RunnablePassthrough
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from pydantic import BaseModel
from pydantic.v1 import BaseModel as BaseModelV1

if TYPE_CHECKING:
    from langchain_diffusiongemma._chat_model import ChatDiffusionGemma

__all__ = ["structured_output"]

Method = Literal["function_calling", "json_mode", "json_schema"]
ANY_OBJECT: dict[str, Any] = {"type": "object"}


def structured_output(
    model: ChatDiffusionGemma, schema: Any, *, method: Method, include_raw: bool, strict: bool | None
) -> Runnable[Any, Any]:
    """The runnable `with_structured_output` returns."""
    if method not in ("function_calling", "json_mode", "json_schema"):
        raise ValueError(f"method must be 'function_calling', 'json_mode' or 'json_schema', not {method!r}")
    if schema is None and method != "json_mode":
        raise ValueError(f"method={method!r} needs a schema; json_mode alone may go without one")
    pydantic = isinstance(schema, type) and issubclass(schema, BaseModel)
    trace = {"kwargs": {"method": method, "strict": strict}, "schema": schema}
    if method == "function_calling":
        name = convert_to_openai_tool(schema)["function"]["name"]
        llm = model.bind_tools(
            [schema], tool_choice=name, parallel_tool_calls=False, strict=strict, ls_structured_output_format=trace
        )
        parser: Runnable[Any, Any] = (
            PydanticToolsParser(tools=[schema], first_tool_only=True)
            if pydantic
            else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
        )
    else:
        response_format = schema if pydantic else _json_schema(schema)
        llm = model.bind(response_format=response_format, ls_structured_output_format=trace)
        parser = RunnableLambda(_parsed)
        if _pydantic_v1(schema):
            parser = parser | RunnableLambda(schema.parse_obj)
    if not include_raw:
        return llm | parser
    parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
    failed = RunnablePassthrough.assign(parsed=lambda _: None)
    return RunnableMap(raw=llm) | parsed.with_fallbacks([failed], exception_key="parsing_error")


def _json_schema(schema: Any) -> dict[str, Any]:
    """A TypedDict, JSON schema or OpenAI tool as a JSON schema (json_mode without one: any JSON object)."""
    if schema is None:
        return ANY_OBJECT
    if isinstance(schema, Mapping) and "function" in schema:
        return dict(schema["function"].get("parameters") or ANY_OBJECT)
    return convert_to_json_schema(schema)


def _pydantic_v1(schema: Any) -> bool:
    return isinstance(schema, type) and issubclass(schema, BaseModelV1)


def _parsed(message: AIMessage) -> Any:
    """The value the SDK validated, or the reason it could not."""
    if "parsed" in message.additional_kwargs:
        return message.additional_kwargs["parsed"]
    error = message.additional_kwargs.get("parsing_error", "the answer was not validated")
    raise OutputParserException(str(error), llm_output=message.text)

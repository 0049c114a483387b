from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from mageagent.errors import Unavailable
from tools.knowledge import knowledge_retrieve_async
from tools.registry import Tool, ToolContext, ToolError, json_fit_list


class GraphragSearchArguments(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=2000, description="What to look for, in natural language")
    limit: int = Field(default=5, ge=1, le=20, description="How many passages to return")


class GraphragSearchTool(Tool):
    name = "graphrag_search"
    description = (
        "Search the company's knowledge base (documents uploaded to MageAgent) and return the most "
        "relevant passages, best first, each with its document id, title and score."
    )
    Arguments = GraphragSearchArguments
    timeout_s = 30.0

    async def run(self, args: GraphragSearchArguments, ctx: ToolContext) -> str:
        if ctx.company_id is None:
            raise ToolError("this task has no company, so it has no knowledge base")
        # The company comes from the task, never from the model's arguments.
        try:
            results = await knowledge_retrieve_async(company_id=ctx.company_id, query=args.query, limit=args.limit)
        except Unavailable as exc:
            raise ToolError(exc.message) from None
        # 20 passages of a full chunk each are more than the model may get: fewer, not cut JSON.
        return json_fit_list({"results": results}, "results", shorten="content")

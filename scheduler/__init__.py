"""Serving: requests, the iteration-level scheduler, the model runner and the LLM front door."""

from scheduler.engine import LLM, LLMEngine, RequestOutput
from scheduler.outputs import ModelRunnerOutput, NewRequestData, ScheduledRequest, SchedulerOutput
from scheduler.params import Request, RequestStatus, SamplingParams
from scheduler.scheduler import POLICIES, Scheduler, SchedulerConfig

__all__ = ["LLM", "LLMEngine", "RequestOutput", "ModelRunnerOutput", "NewRequestData", "ScheduledRequest",
           "SchedulerOutput", "Request", "RequestStatus", "SamplingParams", "POLICIES", "Scheduler",
           "SchedulerConfig"]

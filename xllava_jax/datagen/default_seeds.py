"""Built-in in-context seed examples (two per mvif type); replace them with ``--seeds FILE``.

A seed is ``{"image": path or None, "description": str, "main_objects": [...], "reply": {...}}``
where ``reply`` is in the JSON reply format of ``prompts.format_instruction``. Seeds without
an image are sent as text with their description. A seeds file is a JSON object mapping
each type to a list of such seeds (image paths relative to the file).
"""

from __future__ import annotations

from typing import Any, Sequence


def _reply(pairs: Sequence[tuple[tuple[str, str], tuple[str, str], tuple[str, str]]],
           scene_graph: str | None = None) -> dict[str, Any]:
    """Reply dict from ((en_q, en_a), (ko_q, ko_a), (zh_q, zh_a)) tuples."""
    out: dict[str, Any] = {"scene_graph": scene_graph} if scene_graph else {}
    for i, lang in enumerate(("en", "ko", "zh")):
        out[lang] = [{"question": p[i][0], "answer": p[i][1]} for p in pairs]
    return out


FRUIT = "A fruit stand with a wooden box of oranges and apples next to a pole with a sticker."
KITCHEN = "A kitchen counter with a white cup on the left of a plate of bread and a knife."

DEFAULT_SEEDS: dict[str, list[dict[str, Any]]] = {
    "object": [
        {"image": None, "description": FRUIT,
         "main_objects": ["box", "fruit", "oranges", "apples", "pole", "sticker"],
         "reply": _reply([
             (("What is inside the wooden box?", "The wooden box is filled with bright orange oranges."),
              ("나무 상자 안에는 무엇이 있나요?", "나무 상자에는 선명한 주황색 오렌지가 가득 들어 있습니다."),
              ("木箱里装着什么？", "木箱里装满了鲜橙色的橙子。")),
             (("What color are the apples?", "The apples are red with small yellow spots."),
              ("사과는 무슨 색인가요?", "사과는 작은 노란 반점이 있는 빨간색입니다."),
              ("苹果是什么颜色的？", "苹果是红色的，带有小黄点。")),
         ])},
        {"image": None, "description": KITCHEN,
         "main_objects": ["cup", "plate", "bread", "knife", "counter"],
         "reply": _reply([
             (("What color is the cup?", "The cup is white."),
              ("컵은 무슨 색인가요?", "컵은 흰색입니다."),
              ("杯子是什么颜色的？", "杯子是白色的。")),
             (("What is on the plate?", "The plate holds two slices of bread."),
              ("접시 위에는 무엇이 있나요?", "접시 위에는 빵 두 조각이 있습니다."),
              ("盘子上有什么？", "盘子上有两片面包。")),
         ])},
    ],
    "location": [
        {"image": None, "description": FRUIT,
         "main_objects": ["box", "oranges", "apples", "pole", "sticker"],
         "reply": _reply([
             (("Where are the apples relative to the oranges?", "The apples are to the right of the oranges."),
              ("사과는 오렌지를 기준으로 어디에 있나요?", "사과는 오렌지의 오른쪽에 있습니다."),
              ("苹果相对于橙子在哪里？", "苹果在橙子的右边。")),
             (("Where is the sticker?", "The sticker is on the pole, behind the box."),
              ("스티커는 어디에 있나요?", "스티커는 상자 뒤에 있는 기둥에 붙어 있습니다."),
              ("贴纸在哪里？", "贴纸贴在箱子后面的柱子上。")),
         ], scene_graph="oranges - in - box\napples - right of - oranges\nsticker - on - pole\npole - behind - box")},
        {"image": None, "description": KITCHEN,
         "main_objects": ["cup", "plate", "bread", "knife"],
         "reply": _reply([
             (("Which object is on the left of the plate?", "The white cup is on the left of the plate."),
              ("접시 왼쪽에 있는 물체는 무엇인가요?", "접시 왼쪽에는 흰 컵이 있습니다."),
              ("盘子左边是什么东西？", "盘子左边是白色的杯子。")),
             (("Where is the knife?", "The knife lies in front of the plate."),
              ("칼은 어디에 있나요?", "칼은 접시 앞에 놓여 있습니다."),
              ("刀在哪里？", "刀放在盘子前面。")),
         ], scene_graph="cup - left of - plate\nbread - on - plate\nknife - in front of - plate")},
    ],
    "atmosphere": [
        {"image": None, "description": FRUIT, "main_objects": [],
         "reply": _reply([
             (("What is the overall mood of the scene?", "The scene feels fresh and lively, like a busy market morning."),
              ("장면의 전체적인 분위기는 어떤가요?", "장면은 분주한 시장의 아침처럼 신선하고 활기찬 느낌입니다."),
              ("这个场景的整体氛围如何？", "这个场景给人新鲜而热闹的感觉，就像繁忙的市场早晨。")),
             (("How do the colors affect the atmosphere?", "The bright orange and red fruit make the scene warm and cheerful."),
              ("색감은 분위기에 어떤 영향을 주나요?", "밝은 주황색과 빨간색 과일이 장면을 따뜻하고 밝게 만듭니다."),
              ("颜色如何影响氛围？", "鲜艳的橙色和红色水果让场景显得温暖而欢快。")),
         ])},
        {"image": None, "description": KITCHEN, "main_objects": [],
         "reply": _reply([
             (("What atmosphere does the kitchen have?", "The kitchen looks calm and tidy, suggesting a quiet breakfast."),
              ("부엌은 어떤 분위기인가요?", "부엌은 조용한 아침 식사를 떠올리게 하는 차분하고 깔끔한 모습입니다."),
              ("厨房是什么氛围？", "厨房看起来安静整洁，让人联想到宁静的早餐。")),
             (("Is the scene busy or quiet?", "It is quiet; nobody is present and the counter is uncluttered."),
              ("장면은 분주한가요, 조용한가요?", "조용합니다. 사람이 없고 조리대도 깔끔합니다."),
              ("这个场景是忙碌还是安静？", "很安静，没有人，台面也很整洁。")),
         ])},
    ],
}


def _conversation(desc: str, subject: str, ko_subject: str, zh_subject: str) -> dict[str, Any]:
    """An 8-turn seed conversation about one subject (kept short; real seeds should be richer)."""
    turns = [
        (("What is the main subject of the image?", f"The main subject is {subject}."),
         ("이미지의 주요 대상은 무엇인가요?", f"주요 대상은 {ko_subject}입니다."),
         ("图片的主要对象是什么？", f"主要对象是{zh_subject}。")),
        (("Where could this photo have been taken?", "It looks like an indoor or market setting during the day."),
         ("이 사진은 어디에서 찍었을까요?", "낮 시간의 실내나 시장처럼 보입니다."),
         ("这张照片可能是在哪里拍的？", "看起来像是白天的室内或市场。")),
         (("How many kinds of items are visible?", "At least three kinds of items are clearly visible."),
         ("몇 종류의 물건이 보이나요?", "적어도 세 종류의 물건이 분명히 보입니다."),
         ("可以看到几种物品？", "至少能清楚地看到三种物品。")),
        (("What might a person here be feeling?", "A person here would likely feel relaxed, since the scene is orderly."),
         ("여기 있는 사람은 어떤 기분일까요?", "장면이 정돈되어 있어 편안한 기분일 것입니다."),
         ("这里的人可能有什么感受？", "场景井然有序，人可能会感到放松。")),
        (("What time of day does it seem to be?", "Bright, even light suggests daytime."),
         ("하루 중 언제쯤으로 보이나요?", "밝고 고른 빛으로 보아 낮입니다."),
         ("看起来是一天中的什么时候？", "明亮均匀的光线表明是白天。")),
        (("What is one practical use of these items?", "They can be used to prepare a simple meal or snack."),
         ("이 물건들의 실용적인 용도는 무엇인가요?", "간단한 식사나 간식을 준비하는 데 쓸 수 있습니다."),
         ("这些物品有什么实际用途？", "可以用来准备简单的饭菜或点心。")),
        (("Is anything out of place?", "No, everything appears neatly arranged."),
         ("어색하게 놓인 것이 있나요?", "아니요, 모든 것이 깔끔하게 정리되어 있습니다."),
         ("有什么东西放错地方了吗？", "没有，一切都摆放得很整齐。")),
        (("Describe the scene in one sentence.", f"A neat, daylight scene centred on {subject}."),
         ("장면을 한 문장으로 설명해 주세요.", f"{ko_subject}을 중심으로 한 깔끔한 낮 장면입니다."),
         ("请用一句话描述这个场景。", f"一个以{zh_subject}为中心的整洁白天场景。")),
    ]
    return {"image": None, "description": desc, "main_objects": [], "reply": _reply(turns)}


DEFAULT_SEEDS["conversation"] = [
    _conversation(FRUIT, "a box of fresh fruit", "신선한 과일 상자", "一箱新鲜水果"),
    _conversation(KITCHEN, "a cup beside a plate of bread", "빵 접시 옆의 컵", "面包盘旁边的杯子"),
]
